"""collect_trace: the schema, no padding, labels and targets from offsets, the same in Zarr."""

import numpy as np
import pytest
import torch
import xarray as xr

from moe_lib.core.capture import capture
from moe_lib.core.schema import check_trace
from moe_lib.core.traces import collect_trace

AWKWARD = [
    "The bank of the river, and the bank on Main Street.",
    "emoji 🙂🎉 and CJK 中文字符 mixed",
    "line one\nline two\n\n\ttabbed",
    "",
    "x",
    "def f(x):\n    return {x: 1}  # comment",
]


@pytest.fixture(scope="module")
def olmoe():
    from moe_lib.models.tiny import tiny_model

    return tiny_model("olmoe")


def _same_but_created(a: xr.Dataset, b: xr.Dataset) -> None:
    b = b.copy()
    b.attrs["created"] = a.attrs["created"]
    xr.testing.assert_identical(a, b)


def test_trace_follows_schema_and_drops_padding(olmoe, tokenizer):
    ds = collect_trace(olmoe, tokenizer, AWKWARD, batch_size=3, router_logits=True, progress=False)
    check_trace(ds)
    lengths = [len(tokenizer(t)["input_ids"]) for t in AWKWARD]
    assert ds.sizes["token"] == sum(lengths)
    # every text's positions run 0..n-1 in order, nothing else: no padding slipped in
    for seq, n in enumerate(lengths):
        assert list(ds.pos.values[ds.seq.values == seq]) == list(range(n))
    assert (ds.token_id.values != tokenizer.pad_token_id).all()
    assert (ds.weight.diff("slot") <= 0).all()
    assert list(ds.layer.values) == [0, 1, 2, 3]


def test_trace_equals_capture_of_unpadded_forward(olmoe, tokenizer):
    """Batching with right padding changes nothing for the real tokens."""
    ds = collect_trace(olmoe, tokenizer, AWKWARD[:3], batch_size=3, progress=False)
    for seq, text in enumerate(AWKWARD[:3]):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad(), capture(olmoe, router_logits=False) as cap:
            olmoe(input_ids=ids)
            record = cap.pop()
        mine = ds.expert_id.values[ds.seq.values == seq]
        np.testing.assert_array_equal(mine, record.expert_id)


def test_labels_and_targets_become_token_coords(olmoe, tokenizer):
    texts = ["a bank here", "no target", "bank bank"]
    spans = [[(1, 6)], [], [(0, 4), (4, 9)]]
    ds = collect_trace(
        olmoe, tokenizer, texts, labels={"meaning": ["river", "none", "money"]}, target_spans=spans, progress=False
    )
    assert set(ds.meaning.values[ds.seq.values == 0]) == {"river"}
    for seq, text in enumerate(texts):
        enc = tokenizer(text, return_offsets_mapping=True)
        targets = ds.is_target.values[ds.seq.values == seq]
        expected = [any(s < e2 and e > s2 for s2, e2 in spans[seq]) for s, e in enc["offset_mapping"]]
        assert list(targets) == expected
    assert ds.is_target.values[ds.seq.values == 1].sum() == 0
    assert ds.is_target.values[ds.seq.values == 2].sum() >= 2


def test_zarr_round_trip_is_identical_with_awkward_strings(olmoe, tokenizer, tmp_path):
    kwargs = dict(labels={"domain": ["prose", "emoji", "ws", "empty", "x", "code"]}, batch_size=2, progress=False)
    in_memory = collect_trace(olmoe, tokenizer, AWKWARD, router_logits=True, chunk_tokens=7, **kwargs)
    stored = collect_trace(
        olmoe, tokenizer, AWKWARD, router_logits=True, chunk_tokens=7, store=tmp_path / "t.zarr", **kwargs
    )
    reopened = xr.open_zarr(tmp_path / "t.zarr", consolidated=False, mask_and_scale=False)
    assert reopened.expert_id.dtype == np.int16
    _same_but_created(in_memory, stored.load())
    assert "\n" in "".join(stored.token_str.values) and "🙂" in tokenizer.decode(
        stored.token_id.values[stored.seq.values == 1].tolist()
    )


def test_expert_zero_survives_the_round_trip(olmoe, tokenizer, tmp_path):
    """int16 fill value 0 would mask expert 0 (DESIGN traps): it must read back as 0."""
    stored = collect_trace(olmoe, tokenizer, AWKWARD[:2], store=tmp_path / "t.zarr", progress=False)
    assert (stored.expert_id.values == 0).any()
    assert not np.isnan(stored.expert_id.values.astype(float)).any()


def test_labels_must_match_texts(olmoe, tokenizer):
    with pytest.raises(ValueError, match="label 'domain' has 1 values for 2 texts"):
        collect_trace(olmoe, tokenizer, ["a", "b"], labels={"domain": ["x"]}, progress=False)


def test_predicted_id_is_the_argmax_of_the_models_own_logits(olmoe, tokenizer):
    texts = AWKWARD[:3]
    ds = collect_trace(olmoe, tokenizer, texts, batch_size=3, predictions=True, progress=False)
    assert ds.predicted_id.dims == ("token",) and ds.predicted_id.dtype == np.int32
    assert ds.attrs["vocab_size"] == olmoe.config.vocab_size
    for seq, text in enumerate(texts):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            logits = olmoe(input_ids=ids).logits[0]
        assert logits.shape[0] == ids.shape[1]  # every position's logits, not only the last
        expected = logits.argmax(dim=-1).numpy()
        np.testing.assert_array_equal(ds.predicted_id.values[ds.seq.values == seq], expected)
    # the predictions are not the input ids shifted, or the test would prove little
    assert (ds.predicted_id.values != ds.token_id.values).any()


def test_predictions_are_off_by_default(olmoe, tokenizer):
    ds = collect_trace(olmoe, tokenizer, AWKWARD[:2], progress=False)
    assert "predicted_id" not in ds and "vocab_size" not in ds.attrs


def test_predictions_round_trip_through_zarr(olmoe, tokenizer, tmp_path):
    kwargs = dict(batch_size=2, chunk_tokens=7, predictions=True, progress=False)
    in_memory = collect_trace(olmoe, tokenizer, AWKWARD, **kwargs)
    stored = collect_trace(olmoe, tokenizer, AWKWARD, store=tmp_path / "t.zarr", **kwargs)
    assert stored.predicted_id.dtype == np.int32
    _same_but_created(in_memory, stored.load())


def test_predictions_of_every_family_match_its_logits(any_family_model, tokenizer):
    """Every family returns every position's logits, and its LM head's width as vocab_size."""
    text = "the bank of the river"
    ds = collect_trace(any_family_model, tokenizer, [text], predictions=True, progress=False)
    ids = torch.tensor([tokenizer(text)["input_ids"]], device=any_family_model.device)
    with torch.no_grad():
        logits = any_family_model(input_ids=ids).logits[0]
    np.testing.assert_array_equal(ds.predicted_id.values, logits.argmax(-1).cpu().numpy())
    assert ds.attrs["vocab_size"] == logits.shape[-1]
