"""ablate removes exactly the routes it names, in every family, and leaves the model as it was."""

import numpy as np
import pytest
import torch

from moe_lib.core.capture import capture, find_moe_layers
from moe_lib.interventions.removal import ablate, select_layers, select_slots
from moe_lib.models.families import family_of
from moe_lib.models.tiny import tiny_model


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _routing(model, batch, **ablate_kwargs):
    """Return the capture record of one forward, under ``ablate(**ablate_kwargs)`` if given."""
    with torch.no_grad(), capture(model, router_logits=False) as cap:
        if ablate_kwargs:
            with ablate(model, **ablate_kwargs):
                model(**batch)
        else:
            model(**batch)
        return cap.pop()


def _block_outputs(model, batch, layer, **ablate_kwargs):
    """Return the MoE block output (token, hidden) of ``layer``, under ``ablate`` if given."""
    family = family_of(model.config)
    seen = {}

    def keep(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        seen["out"] = out.detach().reshape(-1, out.shape[-1])

    handle = model.get_submodule(family.block.format(layer=layer)).register_forward_hook(keep)
    try:
        with torch.no_grad():
            if ablate_kwargs:
                with ablate(model, **ablate_kwargs):
                    model(**batch)
            else:
                model(**batch)
    finally:
        handle.remove()
    return seen["out"]


def _n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_removing_every_slot_equals_zero_routed_experts(any_family_model, token_batch):
    model = any_family_model
    family = family_of(model.config)
    handles = [
        model.get_submodule(family.experts.format(layer=layer)).register_forward_hook(
            lambda module, args, output: torch.zeros_like(output)
        )
        for layer in find_moe_layers(model, family)
    ]
    try:
        zeroed = _logits(model, token_batch)
    finally:
        for handle in handles:
            handle.remove()
    with ablate(model, layers="all", slots="all"):
        ablated = _logits(model, token_batch)
    torch.testing.assert_close(ablated, zeroed, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ablated, _logits(model, token_batch), atol=1e-3)


def test_removing_an_expert_changes_only_the_tokens_routed_to_it(any_family_model, token_batch):
    model = any_family_model
    layer = find_moe_layers(model, family_of(model.config))[-1]
    record = _routing(model, token_batch)
    ids = record.expert_id[:, record.layers.index(layer)]
    # the most used expert that some tokens do not use (a correction bias can make one universal)
    counts = np.array([(ids == e).any(axis=1).sum() for e in range(ids.max() + 1)])
    expert = int(np.where(counts < len(ids), counts, 0).argmax())
    before = _block_outputs(model, token_batch, layer)
    routed = torch.from_numpy((ids == expert).any(axis=1)).to(before.device)
    assert 0 < routed.sum() < len(routed)
    after = _block_outputs(model, token_batch, layer, layers=[layer], experts=[expert])
    torch.testing.assert_close(after[~routed], before[~routed], rtol=0, atol=1e-6)
    assert ((after[routed] - before[routed]).abs().amax(dim=-1) > 1e-6).all()


@pytest.mark.parametrize("renormalize", [False, True])
def test_top1_removal_takes_the_largest_weight_and_renormalising_keeps_the_sum(
    any_family_model, token_batch, renormalize
):
    model = any_family_model
    plain = _routing(model, token_batch)
    # only the first MoE layer: its routing is computed before anything changed
    ablated = _routing(model, token_batch, layers="first:1", slots=0, renormalize=renormalize)
    plain_ids, plain_weight = plain.expert_id[:, 0], plain.weight[:, 0]
    ids, weight = ablated.expert_id[:, 0], ablated.weight[:, 0]
    # capture sorts by weight, so the removed route (weight 0) is now the last slot
    np.testing.assert_array_equal(weight[:, -1], 0)
    np.testing.assert_array_equal(np.sort(ids[:, :-1], -1), np.sort(plain_ids[:, 1:], -1))
    expected_sum = plain_weight.sum(-1) if renormalize else plain_weight[:, 1:].sum(-1)
    np.testing.assert_allclose(weight.sum(-1), expected_sum, rtol=1e-5)


def test_capture_sees_the_ablated_weights_whichever_context_is_entered_first(token_batch):
    model = tiny_model("deepseek_v3")  # its router returns unsorted slots
    with torch.no_grad():
        with capture(model) as cap, ablate(model, slots=0):
            model(**token_batch)
        inner = cap.pop()
        with ablate(model, slots=0), capture(model) as cap:
            model(**token_batch)
        outer = cap.pop()
    np.testing.assert_array_equal(inner.weight, outer.weight)
    np.testing.assert_array_equal(inner.weight[..., -1], 0)


def test_random_control_removes_as_many_routes_but_not_always_the_top1(token_batch):
    model = tiny_model("olmoe")
    plain = _routing(model, token_batch)
    with torch.no_grad(), capture(model, router_logits=False) as cap:
        with ablate(model, slots=0, random_control=True, seed=3) as control:
            model(**token_batch)
        record = cap.pop()
    stats = control.stats()
    np.testing.assert_array_equal(stats["n_removed"], stats["n_tokens"])  # one route per token and layer
    top1_removed = record.weight[..., -1] == 0  # the zeroed route sorts last
    top1_removed &= record.expert_id[..., -1] == plain.expert_id[..., 0]
    assert 0.3 < top1_removed.mean() < 0.7  # k = 2: the top-1 goes half the time


def test_random_control_of_expert_ids_draws_as_many_other_experts(token_batch):
    model = tiny_model("mixtral")
    with ablate(model, experts=[1, 5], random_control=True, seed=0) as control:
        pass
    for layer, experts in control.control_experts.items():
        assert len(experts) == 2 and not {1, 5} & set(experts)
    assert len({tuple(e) for e in control.control_experts.values()}) > 1  # drawn per layer


def test_gpt_oss_expert_bias_goes_with_the_expert(token_batch):
    model = tiny_model("gpt_oss")
    layer = find_moe_layers(model, family_of(model.config))[1]
    experts = model.get_submodule(family_of(model.config).experts.format(layer=layer))
    with torch.no_grad():
        experts.down_proj_bias.fill_(0.5)  # so a bias left behind would show
    routed = _block_outputs(model, token_batch, layer, layers=[layer], slots="all")
    assert routed.abs().max() == 0


def test_shared_experts_zeroed_on_request(token_batch):
    model = tiny_model("qwen2_moe")
    layer = find_moe_layers(model, family_of(model.config))[0]
    only_routed_removed = _block_outputs(model, token_batch, layer, layers=[layer], slots="all")
    assert only_routed_removed.abs().max() > 0  # the gated shared expert is still there
    everything = _block_outputs(model, token_batch, layer, layers=[layer], slots="all", shared=True)
    assert everything.abs().max() == 0
    with pytest.raises(ValueError, match="no shared experts"):
        ablate(tiny_model("olmoe"), shared=True)


def test_hooks_removed_on_exit_and_on_error(any_family_model, token_batch):
    model = any_family_model
    before = _n_hooks(model)
    plain = _logits(model, token_batch)
    with pytest.raises(ZeroDivisionError):
        with ablate(model, slots="all"):
            assert _n_hooks(model) > before
            1 / 0
    assert _n_hooks(model) == before
    torch.testing.assert_close(_logits(model, token_batch), plain, rtol=0, atol=0)


def test_layer_and_slot_specs():
    moe_layers = [1, 2, 3]  # layer 0 dense, as in the DeepSeek tiny config
    assert select_layers("all", moe_layers) == [1, 2, 3]
    assert select_layers("first:1", moe_layers) == [1]
    assert select_layers("last:2", moe_layers) == [2, 3]
    assert select_layers([3, 1], moe_layers) == [1, 3]
    assert select_slots("1+", 4) == [1, 2, 3]
    assert select_slots(0, 4) == [0]
    assert select_slots("all", 2) == [0, 1]
    with pytest.raises(ValueError, match=r"\[0\].*MoE layers are \[1, 2, 3\]"):
        select_layers([0], moe_layers)
    with pytest.raises(ValueError, match="last:9"):
        select_layers("last:9", moe_layers)
    with pytest.raises(ValueError, match="top_k=2"):
        select_slots("2+", 2)
    with pytest.raises(ValueError, match="not both"):
        ablate(tiny_model("olmoe"), slots=0, experts=[1])
