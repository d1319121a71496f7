"""Sharded tracing (issue 15): gloo ranks write one store equal to the one-process trace,
resume after a rank is killed, and refuse mixed world sizes or settings."""

import json
import os
import subprocess
import sys

import pytest
import torch
import xarray as xr
from helpers_sharded import run_ranks
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

from moe_lib.core.sharded import ShardPlan, share_bounds
from moe_lib.core.trace_store import (
    TraceStoreError,
    open_trace,
    partial_path,
    ranks_path,
)
from moe_lib.core.traces import collect_trace

# Texts of varied lengths (one empty): regions then start and end inside chunks.
TEXTS = [f"text {i}: " + "the river bank and the key " * (i % 5) for i in range(58)]
TEXTS[5] = ""
OPTIONS = dict(batch_size=4, chunk_tokens=24, max_length=40, labels={"domain": [f"d{i % 3}" for i in range(58)]})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    from moe_lib.models.tiny import tiny_model

    folder = tmp_path_factory.mktemp("sharded") / "tiny-olmoe"
    tiny_model("olmoe").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):
    """The one-process trace, on one thread like each rank."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        store = tmp_path_factory.mktemp("reference") / "one.zarr"
        return collect_trace(model, tokenizer, TEXTS, store=store, progress=False, **OPTIONS).load()
    finally:
        torch.set_num_threads(threads)


def assert_same_trace(expected: xr.Dataset, actual: xr.Dataset) -> None:
    actual = actual.load()
    actual.attrs["created"] = expected.attrs["created"]
    xr.testing.assert_identical(expected, actual)


def test_share_bounds_are_whole_batches_and_cover_every_text():
    assert share_bounds(58, 4, 2) == [0, 28, 58]
    assert share_bounds(38, 4, 2) == [0, 20, 38]
    assert share_bounds(38, 4, 3) == [0, 12, 24, 38]
    assert share_bounds(3, 4, 2) == [0, 0, 3]  # one batch, two ranks: rank 0 gets none


def test_plan_parts_split_regions_at_chunk_bounds():
    plan = ShardPlan(2, 10, [0, 4, 8], [0, 25, 47], {})
    assert plan.parts(0) == (0, 20)  # whole chunks 0:20, then a tail 20:25
    assert plan.parts(1) == (30, 40)  # a head 25:30, whole chunk 30:40, a tail 40:47
    small = ShardPlan(3, 10, [0, 1, 2, 3], [0, 12, 15, 30], {})
    assert small.parts(1) == (15, 15)  # inside one chunk: all of it is a head fragment


def test_two_ranks_write_the_one_process_trace(model_dir, reference, tmp_path):
    store = tmp_path / "sharded.zarr"
    run_ranks(2, model_dir, TEXTS, store, tmp_path, **OPTIONS)
    assert_same_trace(reference, open_trace(store))
    assert not partial_path(store).exists() and not ranks_path(store).exists()


def test_killed_rank_resumes_without_loss_or_duplicates(model_dir, reference, tmp_path):
    store = tmp_path / "resumed.zarr"
    with pytest.raises(ProcessExitedException):
        run_ranks(2, model_dir, TEXTS, store, tmp_path, crash={"rank": 1, "after_forwards": 3}, **OPTIONS)
    assert not store.exists()
    record = json.loads((ranks_path(store) / "rank-00001.json").read_text())
    assert record["n_tokens_done"] > 0  # it had written some chunks: the resume must skip them
    run_ranks(2, model_dir, TEXTS, store, tmp_path, **OPTIONS)
    assert_same_trace(reference, open_trace(store))


def test_other_world_size_or_one_process_is_refused(model_dir, tokenizer, tmp_path):
    store = tmp_path / "mixed.zarr"
    with pytest.raises(ProcessExitedException):
        run_ranks(2, model_dir, TEXTS, store, tmp_path, crash={"rank": 0, "after_forwards": 2}, **OPTIONS)
    with pytest.raises(ProcessRaisedException, match="begun by 2 ranks, now launched with 3"):
        run_ranks(3, model_dir, TEXTS, store, tmp_path, **OPTIONS)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with pytest.raises(TraceStoreError, match="interrupted sharded trace"):
        collect_trace(model, tokenizer, TEXTS, store=store, progress=False, **OPTIONS)
    assert (ranks_path(store) / "plan.json").is_file()  # nothing was deleted


def test_ranks_with_different_settings_are_refused(model_dir, tmp_path):
    store = tmp_path / "different.zarr"
    with pytest.raises(ProcessRaisedException, match="max_length: rank 0 has 40, rank 1 has 32"):
        run_ranks(2, model_dir, TEXTS, store, tmp_path, per_rank={1: {"max_length": 32}}, **OPTIONS)
    assert not partial_path(store).exists()


def test_torchrun_trace_command_equals_the_one_process_command(model_dir, tmp_path):
    from moe_lib.cli import main

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(t for t in TEXTS if t))
    args = ["trace", str(model_dir), "--texts", str(texts), "--batch-size", "4", "--chunk-tokens", "24"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs (torchrun sets OMP_NUM_THREADS=1)
    try:
        assert main(args + ["--out", str(tmp_path / "one.zarr")]) == 0
    finally:
        torch.set_num_threads(threads)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "moe_lib", *args, "--out", str(tmp_path / "two.zarr")]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_trace(open_trace(tmp_path / "one.zarr").load(), open_trace(tmp_path / "two.zarr"))
