"""Capture records what every router did, for every family, without changing the model."""

import numpy as np
import pytest
import torch

from moe_lib.core.capture import CaptureError, capture, find_moe_layers
from moe_lib.models.families import (
    FAMILIES,
    UnsupportedFamilyError,
    expected_moe_layers,
    family_of,
)
from moe_lib.models.scoring import select_experts
from moe_lib.models.tiny import TINY_CONFIGS, tiny_model


def _run(model, batch, **kwargs):
    with torch.no_grad(), capture(model, **kwargs) as cap:
        logits = model(**batch).logits
        return logits, cap.pop()


def test_every_family_has_a_tiny_model():
    assert set(TINY_CONFIGS) == set(FAMILIES)


def test_logits_identical_with_and_without_capture(any_family_model, token_batch):
    with torch.no_grad():
        plain = any_family_model(**token_batch).logits
    hooked, _ = _run(any_family_model, token_batch)
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)


def test_hooks_removed_on_exit_and_on_error(any_family_model, token_batch):
    def n_hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in any_family_model.modules())

    before = n_hooks()
    with pytest.raises(ZeroDivisionError):
        with capture(any_family_model):
            assert n_hooks() > before
            1 / 0
    assert n_hooks() == before


def test_moe_layers_found_match_config(any_family_model):
    family = family_of(any_family_model.config)
    assert find_moe_layers(any_family_model, family) == expected_moe_layers(any_family_model.config)


def test_expert_id_is_the_family_rule_applied_to_router_logits(any_family_model, token_batch):
    model = any_family_model
    family = family_of(model.config)
    _, record = _run(model, token_batch)
    n_tokens, n_layers, k = record.expert_id.shape
    assert n_tokens == token_batch["input_ids"].numel()
    # raw logits are not probability rows (that would be transformers issue 45120's mislabel)
    row_sums = record.router_logits.sum(-1)
    assert not np.allclose(row_sums, 1.0, atol=1e-3)
    for i, layer in enumerate(record.layers):
        router = model.get_submodule(family.router.format(layer=layer))
        ids, weights = select_experts(torch.from_numpy(record.router_logits[:, i]), family, model.config, router)
        np.testing.assert_array_equal(np.sort(record.expert_id[:, i], -1), np.sort(ids.numpy(), -1))
        np.testing.assert_allclose(record.weight[:, i], weights.numpy(), rtol=1e-5, atol=1e-6)


def test_weight_never_increases_along_slot(any_family_model, token_batch):
    _, record = _run(any_family_model, token_batch)
    assert (np.diff(record.weight, axis=-1) <= 0).all()
    assert record.expert_id.dtype == np.int16


def _block_io(model, block_path):
    """Record one MoE block's input and output with plain hooks (test-side only)."""
    seen = {}

    def hook(module, args, output):
        seen["input"] = args[0].detach()
        seen["output"] = (output[0] if isinstance(output, tuple) else output).detach()

    return seen, model.get_submodule(block_path).register_forward_hook(hook)


def test_layer_output_recomputed_from_captured_ids_and_weights(any_family_model, token_batch):
    """sum_k weight_k * expert_{id_k}(x) (+ shared experts) equals the block's real output."""
    model = any_family_model
    family = family_of(model.config)
    layer = find_moe_layers(model, family)[-1]
    seen, handle = _block_io(model, family.block.format(layer=layer))
    try:
        _, record = _run(model, token_batch)
    finally:
        handle.remove()
    i = record.layers.index(layer)
    x = seen["input"].reshape(-1, seen["input"].shape[-1])
    experts = model.get_submodule(family.experts.format(layer=layer))
    ids = torch.from_numpy(record.expert_id[:, i].astype(np.int64)).to(x.device)
    weights = torch.from_numpy(record.weight[:, i]).to(x.device)
    with torch.no_grad():
        recomputed = torch.zeros_like(x)
        for slot in range(ids.shape[1]):
            # one expert at a time, unit weight: that expert's own output
            one = experts(x, ids[:, slot : slot + 1], torch.ones_like(weights[:, slot : slot + 1]))
            recomputed += weights[:, slot : slot + 1] * one
        if family.shared_experts:
            shared = model.get_submodule(family.shared_experts.format(layer=layer))(x)
            if family.shared_gate:
                shared = torch.from_numpy(record.shared_gate[:, i])[:, None].to(x.device) * shared
            recomputed += shared
    torch.testing.assert_close(recomputed, seen["output"].reshape_as(x), rtol=1e-4, atol=1e-5)


def test_unsupported_family_error_lists_supported_ones():
    class Config:
        model_type = "llama"

    with pytest.raises(UnsupportedFamilyError, match="olmoe.*To add one"):
        family_of(Config())


def test_pop_without_forward_is_an_error(any_family_model):
    with capture(any_family_model) as cap, pytest.raises(CaptureError, match="nothing recorded"):
        cap.pop()


def test_package_exposes_capture_as_a_function():
    import moe_lib
    import moe_lib.core.capture  # noqa: F401  (the module lives in core/: it cannot shadow the function)

    assert callable(moe_lib.capture) and moe_lib.capture is capture
