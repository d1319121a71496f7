"""Training the project's own MoEs: loss falls, checkpoints round-trip, resume is exact."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.olmoe.modeling_olmoe import load_balancing_loss_func

from moe_lib.data.tokenizer import save_tokenizer, train_bpe
from moe_lib.models import checkpoints, cross_layer, standard
from moe_lib.training.train import block_order, checkpoint_steps, learning_rate, train

RECIPES = ["standard", "cross-layer"]


def _real_documents() -> list[dict]:
    """Real text at hand: CPython stdlib source (code) and pydoc's topic help (prose)."""
    from pydoc_data.topics import topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [p for p in sorted(stdlib.glob("*.py")) if p.stat().st_size > 4000][:40]
    docs = [
        {"id": f"code:{p.name}", "source": "cpython", "location": p.name, "domain": "code",
         "language": "en", "text": p.read_text(encoding="utf-8", errors="replace")[:6000]}
        for p in code
    ]
    docs += [
        {"id": f"prose:{name}", "source": "pydoc_data", "location": name, "domain": "prose",
         "language": "en", "text": text[:6000]}
        for name, text in sorted(topics.items())[:60]
    ]
    return docs


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    """A corpus folder (train/validation split by document) and a 512-entry BPE trained on it."""
    root = tmp_path_factory.mktemp("train-data")
    docs = _real_documents()
    valid = [d for i, d in enumerate(docs) if i % 10 == 0]
    train_docs = [d for i, d in enumerate(docs) if i % 10 != 0]
    (root / "corpus").mkdir()
    for name, split in (("train", train_docs), ("validation", valid)):
        with open(root / "corpus" / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(d) + "\n" for d in split)
    save_tokenizer(train_bpe([d["text"] for d in train_docs], vocab_size=512), root / "tokenizer")
    return root / "corpus", root / "tokenizer"


def _train(recipe, data_dirs, out, **kwargs):
    corpus, tokenizer = data_dirs
    return train(recipe, "tiny", out_dir=out, corpus_dir=corpus, tokenizer_dir=tokenizer, progress=False, **kwargs)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    last = checkpoints.list_steps(run_dir / "checkpoints")[-1]
    return load_file(checkpoints.step_dir(run_dir / "checkpoints", last) / "model.safetensors")


@pytest.mark.parametrize("recipe", RECIPES)
def test_tiny_preset_loss_falls_and_checkpoints_log_spaced(recipe, data_dirs, tmp_path):
    run_dir = _train(recipe, data_dirs, tmp_path / recipe)
    metrics = pd.read_csv(run_dir / "metrics.csv")
    overall = metrics[metrics.domain == "all"].sort_values("step")
    # Untrained, the loss is about ln(512) = 6.24; 40 steps must learn at least unigram statistics.
    assert overall.val_loss.iloc[0] > 6.0
    assert overall.val_loss.iloc[-1] < overall.val_loss.iloc[0] - 0.5
    assert set(metrics.domain) == {"code", "prose", "all"}
    steps = checkpoints.list_steps(run_dir / "checkpoints")
    assert len(steps) >= 8 and steps[-1] == standard.PRESETS["tiny"].n_steps
    load = pd.read_csv(run_dir / "expert-load.csv")
    assert sorted(load.step.unique()) == steps
    assert (load.max_over_mean >= 1).all() and (load.min_over_mean <= 1).all()


def test_checkpoint_schedule_and_learning_rate():
    steps = checkpoint_steps(1000, 10)
    assert steps[0] == 10 and steps[-1] == 1000 and len(steps) == 10
    ratios = np.diff(np.log(steps))
    assert np.allclose(ratios, ratios.mean(), atol=0.05)  # log-spaced
    recipe = standard.preset("default")
    assert learning_rate(0, recipe) == pytest.approx(recipe.lr / recipe.warmup_steps)
    assert learning_rate(recipe.warmup_steps, recipe) == pytest.approx(recipe.lr)
    assert learning_rate(recipe.n_steps, recipe) == pytest.approx(recipe.lr * recipe.min_lr_ratio)


def test_block_order_is_seeded_and_covers_every_block_each_epoch():
    order = block_order(n_blocks=7, n_steps=5, batch_size=3, seed=1)
    assert order.shape == (5, 3)
    assert np.array_equal(order, block_order(7, 5, 3, seed=1))
    assert not np.array_equal(order, block_order(7, 5, 3, seed=2))
    assert sorted(order.reshape(-1)[:7]) == list(range(7))  # first epoch is a permutation


def test_per_layer_balance_loss_sees_what_the_pooled_loss_hides():
    n_tokens, n_experts = 64, 4
    balanced = torch.full((n_tokens, n_experts), -10.0)
    balanced[torch.arange(n_tokens), torch.arange(n_tokens) % n_experts] = 10.0
    collapsed_on = [torch.full((n_tokens, n_experts), -10.0) for _ in range(n_experts)]
    for expert, logits in enumerate(collapsed_on):
        logits[:, expert] = 10.0
    # Perfect balance gives 1; every token on one expert gives n_experts (top-1).
    assert standard.balance_loss((balanced,), top_k=1).item() == pytest.approx(1.0, abs=1e-4)
    assert standard.balance_loss((collapsed_on[0],), top_k=1).item() == pytest.approx(n_experts, abs=1e-3)
    # Each layer collapsed on a different expert: per layer it is still n_experts, while
    # transformers' pooled loss reads it as perfect balance (the DESIGN.md trap).
    per_layer = standard.balance_loss(tuple(collapsed_on), top_k=1).item()
    pooled = float(load_balancing_loss_func(tuple(collapsed_on), n_experts, top_k=1))
    assert per_layer == pytest.approx(n_experts, abs=1e-3)
    assert pooled == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("recipe", RECIPES)
def test_save_load_gives_identical_logits(recipe, data_dirs, tmp_path):
    module = {"standard": standard, "cross-layer": cross_layer}[recipe]
    tokenizer = AutoTokenizer.from_pretrained(data_dirs[1])
    torch.manual_seed(0)
    model = module.build_model(module.preset("tiny"), len(tokenizer), {"eos_token_id": tokenizer.eos_token_id})
    model.eval()
    path = checkpoints.save(tmp_path, 3, model, {"step": 3}, {"step": 3})
    loaded = checkpoints.load_model(path, AutoModelForCausalLM)
    assert type(loaded) is type(model)
    ids = torch.tensor([tokenizer("def f(x):\n    return x + 1\n")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


@pytest.mark.parametrize("recipe", RECIPES)
def test_resume_after_kill_equals_uninterrupted_run(recipe, data_dirs, tmp_path):
    whole = _train(recipe, data_dirs, tmp_path / "whole")
    killed = _train(recipe, data_dirs, tmp_path / "killed", stop_after=10)
    steps_before = checkpoints.list_steps(killed / "checkpoints")
    assert steps_before[-1] < standard.PRESETS["tiny"].n_steps
    # A crash in the middle of the next save leaves only a .partial folder: never used.
    partial = killed / "checkpoints" / "step-000020.partial"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half a file")
    _train(recipe, data_dirs, killed)
    a, b = _weights(whole), _weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert pd.read_csv(whole / "metrics.csv").equals(pd.read_csv(killed / "metrics.csv").assign(
        elapsed_s=pd.read_csv(whole / "metrics.csv").elapsed_s))


def test_truncated_checkpoint_is_named_and_never_loaded(data_dirs, tmp_path):
    run_dir = _train("standard", data_dirs, tmp_path / "run", stop_after=5)
    last = checkpoints.step_dir(run_dir / "checkpoints", checkpoints.list_steps(run_dir / "checkpoints")[-1])
    weights = last / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(checkpoints.CorruptCheckpointError, match=r"step-0000\d\d: file model.safetensors has"):
        checkpoints.load_model(last, AutoModelForCausalLM)
    with pytest.raises(checkpoints.CorruptCheckpointError, match="model.safetensors"):
        _train("standard", data_dirs, run_dir)  # resuming refuses it too

    first, second = checkpoints.list_steps(run_dir / "checkpoints")[:2]
    altered = tmp_path / "altered"
    shutil.copytree(checkpoints.step_dir(run_dir / "checkpoints", first), altered)
    shutil.copy(checkpoints.step_dir(run_dir / "checkpoints", second) / "trainer.pt", altered / "trainer.pt")
    with pytest.raises(checkpoints.CorruptCheckpointError, match="file trainer.pt"):
        checkpoints.verify(altered)
    (altered / checkpoints.MANIFEST).unlink()
    with pytest.raises(checkpoints.CorruptCheckpointError, match="no manifest.json"):
        checkpoints.verify(altered)


def test_probe_trace_of_a_checkpoint_is_cached_with_its_identity(data_dirs, tmp_path, monkeypatch):
    from moe_lib.core.schema import check_trace
    from moe_lib.training.probe_traces import trace_checkpoint

    monkeypatch.setenv("MOE_LIB_CACHE", str(tmp_path / "cache"))
    run_dir = _train("cross-layer", data_dirs, tmp_path / "run", stop_after=3)
    last = checkpoints.step_dir(run_dir / "checkpoints", 3)
    kwargs = dict(validation_path=data_dirs[0] / "validation.jsonl", tokenizer_dir=data_dirs[1], probes=("domains",))
    trace = check_trace(trace_checkpoint(last, **kwargs)["domains"])
    assert trace.attrs["model"] == "cross-layer-tiny" and trace.attrs["checkpoint_step"] == 3
    assert trace.attrs["family"] == "moe_crosslayer"
    assert set(trace.domain.values) == {"code", "prose"}
    stores = sorted((tmp_path / "cache").glob("probe-domains-cross-layer-tiny-*.zarr"))
    assert len(stores) == 1
    again = trace_checkpoint(last, **kwargs)["domains"]  # read back from the cache, not recomputed
    assert again.attrs["created"] == trace.attrs["created"]
    assert np.array_equal(again.expert_id.values, trace.expert_id.values)
    other = trace_checkpoint(checkpoints.step_dir(run_dir / "checkpoints", 2), **kwargs)["domains"]
    assert other.attrs["cache_key"] != trace.attrs["cache_key"]


def test_baselines_are_scored_on_the_runs_own_eval_text(data_dirs, tmp_path):
    from moe_lib.training.run_report import (
        baselines_on_eval_text,
        expert_balance,
        final_comparison,
    )

    run_dir = _train("standard", data_dirs, tmp_path / "run")
    baselines = baselines_on_eval_text(run_dir, *data_dirs)
    metrics = pd.read_csv(run_dir / "metrics.csv")
    last = metrics[metrics.step == metrics.step.max()].set_index("domain")
    counts = baselines[baselines.model == "unigram"].set_index("domain").n_tokens
    # The same tokens: the model predicts all but the first of each block, n-grams all.
    n_blocks = last.n_tokens / (standard.PRESETS["tiny"].seq_len - 1)
    assert np.allclose(counts[last.index], last.n_tokens + n_blocks)
    wide = final_comparison(run_dir, baselines).set_index("domain")
    assert (wide.bigram_interpolated < wide.unigram).all()  # held-out text: bigrams help
    assert wide.loc["all", "model"] == pytest.approx(last.loc["all", "val_loss"])
    assert len(expert_balance(run_dir)) == standard.PRESETS["tiny"].n_layers


def test_a_run_loads_by_its_folder_as_its_final_checkpoint_with_its_tokenizer(data_dirs, tmp_path):
    from moe_lib.models.registry import ModelNotFoundError, list_revisions, load

    run_dir = _train("standard", data_dirs, tmp_path / "run")
    names = list_revisions(str(run_dir))
    assert names[-1] == f"step-{standard.PRESETS['tiny'].n_steps:06d}" and len(names) > 1
    model, tokenizer = load(str(run_dir))
    assert len(tokenizer) == len(AutoTokenizer.from_pretrained(data_dirs[1]))
    final = checkpoints.load_model(run_dir / "checkpoints" / names[-1], AutoModelForCausalLM)
    early, _ = load(str(run_dir), revision=names[0])
    ids = torch.tensor([tokenizer("def f(x):\n    return x\n")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, final(ids).logits)
        assert not torch.equal(model(ids).logits, early(ids).logits)
    with pytest.raises(ModelNotFoundError, match="no checkpoint 'step-999999'"):
        load(str(run_dir), revision="step-999999")

    from moe_lib.cli import main
    from moe_lib.core.trace_store import open_trace

    (tmp_path / "texts.txt").write_text("def f(x):\n    return x\n")
    argv = ["trace", str(run_dir), "--texts", str(tmp_path / "texts.txt"), "--out", str(tmp_path / "t.zarr")]
    assert main(argv + ["--revision", names[0]]) == 0
    attrs = open_trace(tmp_path / "t.zarr").attrs
    assert (attrs["model"], attrs["revision"]) == (str(run_dir), names[0])  # as given, not the resolved path

    unfinished = _train("standard", data_dirs, tmp_path / "unfinished", stop_after=5)
    with pytest.raises(ModelNotFoundError, match="training stopped at step"):
        load(str(unfinished))


def test_a_folder_without_its_tokenizer_is_refused(data_dirs, tmp_path):
    """transformers builds a 2-entry tokenizer for such a folder instead of failing."""
    from moe_lib.models.registry import ModelNotFoundError, load

    tokenizer = AutoTokenizer.from_pretrained(data_dirs[1])
    model = standard.build_model(standard.preset("tiny"), len(tokenizer), {"eos_token_id": tokenizer.eos_token_id})
    model.save_pretrained(tmp_path / "bare")
    with pytest.raises(ModelNotFoundError, match=r"tokenizer has \d+ entries for a vocabulary of 512"):
        load(str(tmp_path / "bare"))
    tokenizer.save_pretrained(tmp_path / "bare")
    assert len(load(str(tmp_path / "bare"))[1]) == len(tokenizer)
    with pytest.raises(ModelNotFoundError, match="a saved folder has no revisions"):
        load(str(tmp_path / "bare"), revision="step-000010")
