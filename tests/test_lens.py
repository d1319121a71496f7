"""The logit lens reads the model's own output at the last layer, and ablations show up where they act."""

import inspect
import json

import numpy as np
import pandas as pd
import pytest
import torch

from moe_lib.core.capture import find_moe_layers
from moe_lib.interventions.ablation import encode_batches
from moe_lib.interventions.lens import (
    ResidualStream,
    lens_batch,
    lens_difference,
    lens_logits,
    logit_lens,
    summarize_lens,
    target_ranks,
)
from moe_lib.models.families import family_of
from moe_lib.models.tiny import tiny_model

TEXTS = [inspect.getdoc(json.dumps)[:200], "def add(a, b):\n    return a + b\n", "Answer: B"]


def test_lens_at_the_last_layer_is_the_models_output(any_family_model, token_batch):
    model = any_family_model
    with torch.no_grad(), ResidualStream(model) as stream:
        logits = model(**token_batch).logits
    last = max(stream.outputs)
    assert sorted(stream.outputs) == list(range(model.config.num_hidden_layers))
    torch.testing.assert_close(lens_logits(model, stream.outputs[last]), logits.float(), rtol=1e-5, atol=1e-5)


def test_lens_applies_granites_logit_scaling(token_batch):
    model = tiny_model("granitemoe", logits_scaling=4.0)
    with torch.no_grad(), ResidualStream(model) as stream:
        logits = model(**token_batch).logits
    torch.testing.assert_close(lens_logits(model, stream.outputs[3]), logits, rtol=1e-5, atol=1e-5)


def test_lens_table_matches_the_models_next_token_logprobs(tokenizer):
    model = tiny_model("mixtral")
    lens = logit_lens(model, encode_batches(tokenizer, TEXTS, batch_size=2))
    last = lens[lens["layer"] == model.config.num_hidden_layers - 1]
    for item, text in enumerate(TEXTS):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logprobs = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        expected = logprobs.gather(-1, ids[0, 1:, None])[:, 0].numpy()
        rows = last[last["item"] == item].sort_values("pos")
        np.testing.assert_allclose(rows["logprob"], expected, rtol=1e-5, atol=1e-6)
        assert (rows["target_id"].to_numpy() == ids[0, 1:].numpy()).all()
        expected_rank = (logprobs > logprobs.gather(-1, ids[0, 1:, None])).sum(-1).numpy()
        assert (rows["rank"].to_numpy() == expected_rank).all()
    assert lens.groupby("layer").size().nunique() == 1  # every layer sees every position


def test_target_ranks_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0], [0.0, 0.0, 5.0, 0.0]])
    rank, logprob = target_ranks(logits, torch.tensor([2, 2]))
    assert rank.tolist() == [2, 0]  # two larger logits above it; then the largest
    rank, _ = target_ranks(logits, torch.tensor([1, 0]))
    assert rank.tolist() == [0, 1]  # ties do not count against the target
    by_hand = np.exp(2) / np.exp([1, 3, 2, 3]).sum() + np.exp(5) / (np.exp(5) + 3)
    np.testing.assert_allclose(logprob.exp().sum(), by_hand, rtol=1e-6)


def test_ablated_lens_differs_only_from_the_ablated_layer_on(tokenizer):
    model = tiny_model("olmoe")
    batches = encode_batches(tokenizer, TEXTS, batch_size=3)
    baseline = logit_lens(model, batches)
    ablated = logit_lens(model, batches, ablation={"layers": "last:2", "slots": 0})
    diff = lens_difference(ablated, baseline)
    first_ablated = find_moe_layers(model, family_of(model.config))[-2]
    before = diff[diff["layer"] < first_ablated]
    after = diff[diff["layer"] >= first_ablated]
    assert (before[["delta_prob", "delta_logprob", "delta_rank"]].to_numpy() == 0).all()
    assert (after["delta_logprob"].abs() > 0).mean() > 0.9
    np.testing.assert_allclose(diff["delta_prob"], diff["prob"] - diff["prob_baseline"])


def test_answer_letter_lens_and_candidate_rank(tokenizer):
    model = tiny_model("qwen3_moe")
    prompts = ["Question one.\nAnswer:", "Another, longer question here.\nAnswer:"]
    candidates = [40, 41, 42, 43]
    answer_ids = [41, 43]
    batches = encode_batches(tokenizer, prompts, batch_size=2)
    lens = logit_lens(model, batches, answer_ids=answer_ids, candidates=candidates)
    assert len(lens) == len(prompts) * model.config.num_hidden_layers
    last = lens[lens["layer"] == 3].set_index("item")
    for item, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        assert last.loc[item, "pos"] == ids.shape[1] - 1
        assert last.loc[item, "candidate_rank"] == (logits[candidates] > logits[answer_ids[item]]).sum()
        assert last.loc[item, "prob"] == pytest.approx(logits.softmax(-1)[answer_ids[item]].item(), rel=1e-5)


def test_summarize_lens_by_hand():
    lens = pd.DataFrame(
        {
            "item": [0, 1, 0, 1],
            "pos": [0, 0, 0, 0],
            "layer": [0, 0, 1, 1],
            "target_id": [5, 6, 5, 6],
            "rank": [0, 4, 0, 0],
            "logprob": np.log([0.5, 0.1, 0.9, 0.7]),
            "candidate_rank": [1, 2, 0, 0],
        }
    )
    lens["prob"] = np.exp(lens["logprob"])
    summary = summarize_lens(lens).set_index("layer")
    assert summary.loc[0, "prob"] == pytest.approx(0.3) and summary.loc[1, "prob"] == pytest.approx(0.8)
    assert summary.loc[0, "top1"] == 0.5 and summary.loc[1, "top1"] == 1.0
    assert summary.loc[0, "median_rank"] == 2.0
    assert summary.loc[0, "candidate_top1"] == 0.0 and summary.loc[1, "candidate_top1"] == 1.0


def test_lens_difference_refuses_tables_that_do_not_match(tokenizer):
    model = tiny_model("olmoe")
    batches = encode_batches(tokenizer, TEXTS, batch_size=3)
    lens = logit_lens(model, batches)
    with pytest.raises(ValueError, match="do not match"):
        lens_difference(lens.iloc[1:], lens)
    assert lens_batch(model, batches[0]).equals(lens)  # one batch here: the same table
