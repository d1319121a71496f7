"""Interrupted writes never leave a store that is used; they resume without loss or duplicates."""

import pytest
import xarray as xr

from moe_lib.core.trace_store import (
    TraceStoreError,
    TraceWriter,
    is_trace_store,
    open_trace,
    partial_path,
)
from moe_lib.core.traces import collect_trace

TEXTS = [f"text number {i}: the bank, the river, the key {i * 7}" for i in range(24)]


@pytest.fixture(scope="module")
def olmoe():
    from moe_lib.models.tiny import tiny_model

    return tiny_model("olmoe")


class Crash(Exception):
    pass


def _crash_after(model, n_forwards):
    calls = {"n": 0}

    def hook(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] > n_forwards:
            raise Crash

    return model.register_forward_pre_hook(hook, with_kwargs=True)


def _interrupted_trace(model, tokenizer, store, **kwargs):
    """Start a trace into ``store`` and crash it after three forwards."""
    handle = _crash_after(model, 3)
    try:
        with pytest.raises(Crash):
            _trace(model, tokenizer, store, **kwargs)
    finally:
        handle.remove()


def _trace(model, tokenizer, store=None, **kwargs):
    return collect_trace(
        model, tokenizer, TEXTS, batch_size=4, chunk_tokens=20, store=store, progress=False, **kwargs
    )


def _assert_same_trace(a, b):
    b = b.copy()
    b.attrs["created"] = a.attrs["created"]
    xr.testing.assert_identical(a.load(), b.load())


def test_crash_mid_write_leaves_no_store_then_resumes(olmoe, tokenizer, tmp_path):
    store = tmp_path / "t.zarr"
    _interrupted_trace(olmoe, tokenizer, store)
    assert not store.exists()  # nothing at the final path looks complete
    assert is_trace_store(partial_path(store))
    resumed = _trace(olmoe, tokenizer, store)
    assert not partial_path(store).exists()
    _assert_same_trace(_trace(olmoe, tokenizer), resumed)


def test_predicted_ids_resume_without_loss_or_duplicates(olmoe, tokenizer, tmp_path):
    store = tmp_path / "t.zarr"
    _interrupted_trace(olmoe, tokenizer, store, predictions=True)
    resumed = _trace(olmoe, tokenizer, store, predictions=True)
    full = _trace(olmoe, tokenizer, predictions=True)
    assert resumed.predicted_id.sizes["token"] == full.sizes["token"]
    _assert_same_trace(full, resumed)


def test_resume_without_predictions_is_refused(olmoe, tokenizer, tmp_path):
    """A write started with predictions cannot resume without them: half the store would lack ids."""
    store = tmp_path / "t.zarr"
    _interrupted_trace(olmoe, tokenizer, store, predictions=True)
    with pytest.raises(TraceStoreError, match="other settings.*vocab_size"):
        _trace(olmoe, tokenizer, store)


def test_crash_between_append_and_progress_record_is_cut_back(olmoe, tokenizer, tmp_path, monkeypatch):
    """Tokens appended after the last progress record are dropped on resume, not duplicated."""
    store = tmp_path / "t.zarr"
    original = TraceWriter._write_progress
    calls = {"n": 0}

    def flaky(self, n_texts_done):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Crash  # the second chunk's data is in the store, its record is not
        original(self, n_texts_done)

    monkeypatch.setattr(TraceWriter, "_write_progress", flaky)
    with pytest.raises(Crash):
        _trace(olmoe, tokenizer, store)
    monkeypatch.setattr(TraceWriter, "_write_progress", original)
    resumed = _trace(olmoe, tokenizer, store)
    full = _trace(olmoe, tokenizer)
    assert resumed.sizes["token"] == full.sizes["token"]
    _assert_same_trace(full, resumed)


def test_resume_with_other_settings_is_refused(olmoe, tokenizer, tmp_path):
    store = tmp_path / "t.zarr"
    _interrupted_trace(olmoe, tokenizer, store)
    with pytest.raises(TraceStoreError, match="other settings.*max_length"):
        collect_trace(olmoe, tokenizer, TEXTS, batch_size=4, chunk_tokens=20, max_length=9, store=store, progress=False)


def test_existing_paths_are_never_overwritten(olmoe, tokenizer, tmp_path):
    not_a_trace = tmp_path / "notes.zarr"
    not_a_trace.mkdir()
    (not_a_trace / "keep.txt").write_text("mine")
    with pytest.raises(TraceStoreError, match="already exists \\(not a trace store\\)"):
        _trace(olmoe, tokenizer, not_a_trace)
    assert (not_a_trace / "keep.txt").read_text() == "mine"
    with pytest.raises(TraceStoreError, match="not a routing trace"):
        open_trace(not_a_trace)
