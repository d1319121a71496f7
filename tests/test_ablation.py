"""The ablation grid: reuse gives the naive numbers, scores are the model's own, intervals behave."""

import inspect
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from moe_lib.core.capture import capture, find_moe_layers
from moe_lib.interventions.ablation import (
    BASELINE,
    Condition,
    bootstrap_summary,
    encode_batches,
    grid_conditions,
    next_token_score,
    heldout_loss,
    letter_scorer,
    letter_token_ids,
    run_grid,
    score_multiple_choice,
    start_layer,
    summarize_accuracy,
    summarize_loss,
)
from moe_lib.models.families import family_of, top_k
from moe_lib.models.tiny import tiny_model, tiny_tokenizer

TEXTS = [
    inspect.getdoc(json.dumps),
    inspect.getdoc(json.loads)[:300],
    "def add(a, b):\n    return a + b\n",
    "The following are multiple choice questions (with answers) about physics.",
    inspect.getdoc(pd.merge)[:500],
]


@pytest.fixture(scope="module")
def letters_tokenizer():
    """The tiny BPE, trained with answer lines so that ' A' ... ' D' are single tokens."""
    texts = [inspect.getdoc(json), inspect.getdoc(inspect)] + [f"Answer: {c}\n" * 50 for c in "ABCD"]
    return tiny_tokenizer(texts)


def _grid(model, grid="default"):
    family = family_of(model.config)
    return grid_conditions(find_moe_layers(model, family), top_k(model.config), grid, bool(family.shared_experts))


def test_reusing_grid_gives_the_naive_numbers(any_family_model, tokenizer):
    model = any_family_model
    conditions = _grid(model)
    kwargs = dict(batch_size=2, max_length=24, seed=5, progress=False)
    reused = heldout_loss(model, tokenizer, TEXTS[:4], conditions, reuse=True, **kwargs)
    naive = heldout_loss(model, tokenizer, TEXTS[:4], conditions, reuse=False, **kwargs)
    pd.testing.assert_frame_equal(reused.drop(columns="nll_sum"), naive.drop(columns="nll_sum"))
    np.testing.assert_allclose(reused["nll_sum"], naive["nll_sum"], rtol=1e-5)
    # and the grid did change something: top-1 everywhere costs loss
    per_condition = reused.groupby("condition")["nll_sum"].sum()
    assert per_condition["slots 0 | layers all"] != per_condition[BASELINE]


@pytest.mark.parametrize("family", ["olmoe", "qwen3_moe"])
def test_removing_a_last_layer_expert_unembeds_only_the_tokens_routed_to_it(family, tokenizer):
    """No attention follows the last MoE layer: the other positions keep the baseline's loss."""
    model = tiny_model(family)
    last = find_moe_layers(model, family_of(model.config))[-1]
    assert last == model.config.num_hidden_layers - 1
    batch, = encode_batches(tokenizer, TEXTS[:3], batch_size=3, max_length=32)
    with capture(model, router_logits=False) as cap, torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    routes = cap.pop().expert_id[:, -1].reshape(*batch["input_ids"].shape, -1)  # (row, pos, slot), last layer
    expert = int(np.bincount(routes[:, :-1].reshape(-1)).argmax())
    predicting = np.arange(routes.shape[1] - 1)[None, :] < batch["lengths"][:, None] - 1
    routed = int(((routes[:, :-1] == expert).any(-1) & predicting).sum())
    assert 0 < routed < predicting.sum()

    unembedded = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: unembedded.append(args[0].shape[0]))
    conditions = [Condition(), Condition.removing({last: [expert]})]
    try:
        reused = run_grid(model, [batch], conditions, next_token_score, progress=False)
    finally:
        hook.remove()
    naive = run_grid(model, [batch], conditions, next_token_score, reuse=False, progress=False)
    assert unembedded == [int(predicting.sum()), routed]  # the baseline once, then the routed tokens
    np.testing.assert_allclose(reused["nll_sum"], naive["nll_sum"], rtol=1e-6)
    assert not np.allclose(reused["nll_sum"][3:], reused["nll_sum"][:3])  # the removal did change the loss


def test_baseline_loss_is_the_models_own(tokenizer):
    model = tiny_model("olmoe")
    results = heldout_loss(model, tokenizer, TEXTS, [Condition()], batch_size=2, max_length=48, progress=False)
    for item, text in enumerate(TEXTS):
        ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :48]
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss.item()
        row = results[results["item"] == item].iloc[0]
        assert row["n_predicted"] == ids.shape[1] - 1
        assert row["nll_sum"] / row["n_predicted"] == pytest.approx(loss, rel=1e-5)


def test_letter_logprobs_are_the_models_own_at_the_answer_position(letters_tokenizer):
    model = tiny_model("qwen3_moe")
    prompts = ["Q: 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:", "Answer: A\nAnswer:", "Some longer text.\nAnswer:"]
    answers = [1, 0, 3]
    results = score_multiple_choice(
        model, letters_tokenizer, prompts, answers, [Condition()], batch_size=3, progress=False
    )
    letter_ids = letter_token_ids(letters_tokenizer)
    for item, prompt in enumerate(prompts):
        ids = letters_tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            expected = model(input_ids=ids).logits[0, -1].log_softmax(-1)[letter_ids].numpy()
        row = results[results["item"] == item].iloc[0]
        got = row[["logprob_A", "logprob_B", "logprob_C", "logprob_D"]].to_numpy(float)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert row["pred"] == expected.argmax() and row["correct"] == (expected.argmax() == answers[item])


def test_scorer_picks_the_letter_with_the_highest_logprob():
    """A constructed case: the unembedding reads each letter's logit off one hidden unit."""
    model = tiny_model("olmoe")
    letter_ids = [10, 20, 30, 40]
    with torch.no_grad():
        model.lm_head.weight.zero_()
        for unit, token in enumerate(letter_ids):
            model.lm_head.weight[token, unit] = 1.0
    normed = torch.zeros(2, 3, model.config.hidden_size)
    normed[0, 2, :4] = torch.tensor([0.5, 2.0, -1.0, 1.9])  # B wins, C loses
    normed[1, 1, :4] = torch.tensor([3.0, 0.0, 0.0, 0.0])  # A; this row's last token is at 1
    normed[1, 2, :4] = torch.tensor([0.0, 0.0, 0.0, 9.0])  # padding: must be ignored
    batch = {"lengths": np.array([3, 2]), "item": np.array([0, 1])}
    table = letter_scorer(letter_ids, answers=[1, 2])(model, normed, batch)
    assert table["pred"].tolist() == [1, 0]
    assert table["correct"].tolist() == [True, False]
    vocab = model.config.vocab_size
    # log-softmax over the vocabulary by hand: 508 zero logits and the four letters
    row0 = np.array([0.5, 2.0, -1.0, 1.9])
    expected = row0 - np.log(np.exp(row0).sum() + (vocab - 4))
    got = table.loc[0, ["logprob_A", "logprob_B", "logprob_C", "logprob_D"]].to_numpy(float)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_letters_that_are_not_single_tokens_are_refused(tokenizer):
    with pytest.raises(ValueError, match="not one token"):
        letter_token_ids(tokenizer)  # the plain tiny BPE splits ' B' into ' ' and 'B'


def test_default_grid_shape_and_controls():
    conditions = grid_conditions([0, 1, 2, 3], top_k=2)
    names = [c.name for c in conditions]
    assert names[0] == BASELINE and len(names) == len(set(names))
    # baseline + 3 layer sets x (2 slot sets x renorm x control + slots all)
    assert len(conditions) == 1 + 3 * (2 * 2 * 2 + 1)
    for condition in conditions[1:]:
        if condition.slots != "all":
            control = not condition.random_control
            twin = Condition(condition.layers, condition.slots, condition.renormalize, random_control=control)
            assert twin in conditions
    assert {c.layers for c in conditions[1:]} == {"all", "first:2", "last:2"}
    assert start_layer(Condition("last:2", "0"), [1, 2, 3, 4]) == 3
    full = grid_conditions([1, 2, 3], top_k=1, grid="full", has_shared=True)
    assert not any(c.slots == "1+" for c in full)  # top-1 models have no slots 1+
    assert any(c.shared for c in full) and Condition((2,), "0") in full


def test_encode_batches_keeps_the_question_end_of_long_prompts(tokenizer):
    batches = encode_batches(tokenizer, ["a b c d e f g h", "x y"], batch_size=2, max_length=3, keep="end")
    (batch,) = batches
    full = tokenizer("a b c d e f g h")["input_ids"]
    row = list(batch["item"]).index(0)
    assert batch["input_ids"][row, :3].tolist() == full[-3:]
    assert batch["attention_mask"].sum(1).tolist() == batch["lengths"].tolist()


def _toy_results():
    rng = np.random.default_rng(0)
    rows = []
    for item in range(200):
        subject = "algebra" if item < 100 else "law"
        correct = rng.random() < (0.8 if subject == "algebra" else 0.4)
        for condition, is_correct in [(BASELINE, correct), ("slots 0 | layers all", correct and item % 2 == 0)]:
            labels = {"condition": condition, "item": item, "subject": subject, "correct": is_correct}
            rows.append({**Condition().columns(), **labels})
    return pd.DataFrame(rows)


def test_accuracy_summary_by_hand_and_paired_intervals():
    results = _toy_results()
    summary = summarize_accuracy(results, by=["subject"], n_boot=500, seed=1)
    for (subject, condition), row in summary.set_index(["subject", "condition"]).iterrows():
        part = results[(results["subject"] == subject) & (results["condition"] == condition)]
        assert row["accuracy"] == pytest.approx(part["correct"].mean())
        assert row["lo"] <= row["accuracy"] <= row["hi"] and row["hi"] - row["lo"] > 0.05
        assert row["chance"] == 0.25 and row["n_items"] == 100
    baseline = summary[summary["condition"] == BASELINE]
    assert (baseline[["delta", "delta_lo", "delta_hi"]].to_numpy() == 0).all()
    ablated = summary[summary["condition"] != BASELINE]
    assert (ablated["delta_hi"] < 0).all()  # removing half the correct answers is a clear drop
    again = summarize_accuracy(results, by=["subject"], n_boot=500, seed=1)
    pd.testing.assert_frame_equal(summary, again)


def test_loss_summary_pools_tokens_not_texts():
    results = pd.DataFrame(
        {
            **{k: [v] * 4 for k, v in Condition().columns().items()},
            "item": [0, 1, 2, 3],
            "domain": ["code", "code", "speech", "speech"],
            "nll_sum": [10.0, 30.0, 8.0, 8.0],
            "n_predicted": [5, 5, 4, 2],
        }
    )
    summary = summarize_loss(results, n_boot=200).set_index("domain")
    assert summary.loc["code", "loss"] == pytest.approx(4.0)
    assert summary.loc["speech", "loss"] == pytest.approx(16 / 6)
    assert summary.loc["code", "lo"] >= 2.0 and summary.loc["code", "hi"] <= 6.0


def test_summary_refuses_conditions_missing_items():
    results = _toy_results()
    results = results[~((results["condition"] == BASELINE) & (results["item"] == 3))]
    with pytest.raises(ValueError, match="lack some items"):
        bootstrap_summary(results, "correct")


def _write_mmlu_csv(root, subject="abstract_algebra"):
    """The original release's layout, two splits of one subject (no header)."""
    for split, n_rows in [("dev", 5), ("test", 6)]:
        folder = root / "data" / split
        folder.mkdir(parents=True)
        rows = [f'"What is {i} + {i}?",{2 * i},{i},{i + 1},{3 * i},{"ABCD"[i % 4]}' for i in range(n_rows)]
        (folder / f"{subject}_{split}.csv").write_text("\n".join(rows) + "\n")


def test_ablate_command_writes_the_grid_and_lens_to_the_cache(tmp_path, monkeypatch, letters_tokenizer):
    from moe_lib.cli import main
    from moe_lib.interventions.ablation import cached_results

    monkeypatch.setenv("MOE_LIB_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "model"
    tiny_model("olmoe").save_pretrained(model_dir)
    letters_tokenizer.save_pretrained(model_dir)
    corpus = tmp_path / "validation.jsonl"
    docs = [
        {"id": f"d{i}", "source": "test", "location": str(i), "domain": ["code", "speech"][i % 2], "language": "en"}
        | {"text": TEXTS[i]}
        for i in range(4)
    ]
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    heldout = ["ablate", str(model_dir), "--benchmark", "heldout", "--corpus", str(corpus), "--n-docs", "2"]
    heldout += ["--max-length", "32"]
    assert main(heldout) == 0
    grid = cached_results("ablation-heldout")
    assert len(grid) == 4 * 28 and set(grid["domain"]) == {"code", "speech"}
    assert grid["n_predicted"].max() == 31 and (grid["model"] == str(model_dir)).all()  # 32 tokens kept
    lens = cached_results("lens-heldout")
    assert set(lens["condition"]) == {BASELINE, "slots 0 | layers all", "slots 0 | layers all | random"}

    _write_mmlu_csv(tmp_path / "mmlu")
    mmlu = ["ablate", str(model_dir), "--benchmark", "mmlu", "--mmlu-source", "csv", "--mmlu-root", str(tmp_path / "mmlu")]
    mmlu += ["--n-questions", "4", "--n-shots", "2", "--max-length", "200"]
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the committed subject -> domain table
    assert main(mmlu) == 0
    grid = cached_results("ablation-mmlu")
    assert len(grid) == 4 * 28 and (grid["domain"] == "math").all()
    # a second run reads the cache: nothing is recomputed
    monkeypatch.setattr("moe_lib.interventions.ablation.run_grid", lambda *a, **k: pytest.fail("recomputed"))
    assert main(mmlu + ["--no-lens"]) == 0


def test_grid_refuses_a_model_whose_experts_module_is_bypassed(tokenizer):
    """A fused kernel replacing the MoE block would make an ablation silently remove nothing."""
    model = tiny_model("olmoe")
    block = model.get_submodule(family_of(model.config).block.format(layer=3))
    block.forward = lambda hidden_states: torch.zeros_like(hidden_states)  # never calls its experts
    with pytest.raises(RuntimeError, match=r"layers \[3\] were never called"):
        heldout_loss(model, tokenizer, TEXTS[:2], [Condition(), Condition("last:1", "0")], progress=False)


def test_holm_adjusts_step_down_and_keeps_order_and_nan():
    from moe_lib.interventions.ablation import holm

    adjusted = holm([0.01, np.nan, 0.04, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08 (raised to 0.09), 0.5
    assert np.allclose(adjusted[[0, 3, 2, 4]], [0.04, 0.09, 0.09, 0.5]) and np.isnan(adjusted[1])
    assert (holm([0.6, 0.7]) == 1.0).all()


def test_bootstrap_p_is_small_for_a_real_difference_and_large_for_none():
    from moe_lib.interventions.ablation import BASELINE, bootstrap_summary

    rng = np.random.default_rng(0)
    n = 200
    base = rng.normal(2.0, 0.1, n)
    rows = pd.DataFrame({"item": np.tile(np.arange(n), 3),
                         "condition": np.repeat([BASELINE, "shifted", "same"], n),
                         "nll": np.concatenate([base, base + 0.05, base + rng.normal(0, 0.01, n)])})
    p = bootstrap_summary(rows, "nll").set_index("condition")["delta_p"]
    assert np.isnan(p[BASELINE]) and p["shifted"] == pytest.approx(1 / 1000) and p["same"] > 0.05


CHAT_TEMPLATE = ("{% for m in messages %}<|user|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def chat_tokenizer():
    """The tiny BPE trained on chat turns answered by a bare letter, with a chat template."""
    turns = [f"<|user|>\nQ\nAnswer:\n<|assistant|>\n{c}\n" * 50 for c in "ABCD"]
    tok = tiny_tokenizer([inspect.getdoc(json), *turns])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_chat_prompts_open_the_assistant_turn_and_score_the_bare_letter(chat_tokenizer):
    from moe_lib.interventions.ablation import answer_letter_ids
    from moe_lib.interventions.ablation_runs import chat_prompts

    prompts = chat_prompts(["Q: 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"], chat_tokenizer)
    assert prompts[0].startswith("<|user|>\nQ: 2 + 2?") and prompts[0].endswith("Answer:\n<|assistant|>\n")
    letters = answer_letter_ids(chat_tokenizer, prompts)
    # each id is the bare letter the assistant would write first, one token of its own
    assert [chat_tokenizer.decode([i]) for i in letters] == list("ABCD")
    model = tiny_model("olmoe")
    results = score_multiple_choice(model, chat_tokenizer, prompts, [1], [Condition()], progress=False)
    ids = chat_tokenizer(prompts[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model(input_ids=ids).logits[0, -1].log_softmax(-1)[letters].numpy()
    got = results.loc[0, ["logprob_A", "logprob_B", "logprob_C", "logprob_D"]].to_numpy(float)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_chat_prompts_refuse_a_tokenizer_without_a_template(letters_tokenizer):
    from moe_lib.interventions.ablation_runs import RunSettings, chat_prompts

    with pytest.raises(ValueError, match="no chat template.*--prompt plain"):
        chat_prompts(["Answer:"], letters_tokenizer)
    with pytest.raises(ValueError, match="prompt='dialogue'"):
        RunSettings("mmlu", prompt="dialogue")
