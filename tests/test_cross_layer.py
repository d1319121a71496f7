"""The cross-layer recipe's routing, and both recipes' router contract, checked on real forwards."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from moe_lib.core.capture import capture
from moe_lib.models import cross_layer, standard

VOCAB = 300
MODULES = {"standard": standard, "cross-layer": cross_layer}


def _model(recipe: str, **overrides):
    module = MODULES[recipe]
    torch.manual_seed(0)
    model = module.build_model(module.preset("tiny", **overrides), VOCAB, {"eos_token_id": 0, "pad_token_id": 1})
    return model.eval()


def _ids(n_batch=2, n_pos=12):
    return torch.randint(2, VOCAB, (n_batch, n_pos), generator=torch.Generator().manual_seed(1))


def _perturb_offsets(model):
    """Give every layer's offset a distinct non-zero value (they start at zero)."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.offset.normal_(0, 0.5)


def _record(model, module_name, ids, pre=False):
    """Return per-layer (args, output) of the named submodule type during one forward."""
    seen, handles = {}, []
    for i, layer in enumerate(model.model.layers):
        target = layer.get_submodule(module_name)
        if pre:
            handles.append(target.register_forward_pre_hook(lambda m, a, k, i=i: seen.__setitem__(i, (a, k)),
                                                            with_kwargs=True))
        else:
            handles.append(target.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, (a, out))))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_router_logits_are_shared_matrix_plus_layer_offset():
    model = _model("cross-layer")
    _perturb_offsets(model)
    seen = _record(model, "mlp.gate", _ids())
    shared = model.model.shared_router.weight
    for i, layer in enumerate(model.model.layers):
        gate = layer.mlp.gate
        assert gate.shared_weight is shared  # one matrix, not a copy per layer
        (routing,), (logits, _, _) = seen[i]
        expected = routing @ shared.T + routing @ gate.offset.T  # (token, expert)
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    # The layers really differ only through their offsets.
    (r0,), (l0, _, _) = seen[0]
    assert not torch.allclose(l0, r0 @ model.model.layers[1].mlp.gate.offset.T + r0 @ shared.T)
    # state_dict holds the shared matrix once.
    assert [k for k in model.state_dict() if "shared_router" in k] == ["model.shared_router.weight"]


def test_routing_vector_is_updated_by_a_gated_down_projection():
    model = _model("cross-layer")
    seen = _record(model, "routing_update", _ids())
    (hidden0, routing0), out0 = seen[0]
    assert torch.count_nonzero(routing0) == 0  # the stream starts at zero
    for i, layer in enumerate(model.model.layers):
        (hidden, routing), out = seen[i]
        update = layer.routing_update
        expected = routing + torch.sigmoid(update.write_gate(hidden)) * update.down(hidden)
        torch.testing.assert_close(out, expected)
        if i > 0:  # each layer reads what the previous one wrote
            torch.testing.assert_close(routing, seen[i - 1][1])
    assert out0.shape[-1] == model.config.routing_dim


@pytest.mark.parametrize("recipe", MODULES)
@pytest.mark.parametrize("norm_topk_prob", [False, True])
def test_gate_returns_logits_weights_ids_and_experts_get_them(recipe, norm_topk_prob):
    model = _model(recipe, norm_topk_prob=norm_topk_prob)
    ids = _ids()
    gates = _record(model, "mlp.gate", ids)
    experts = _record(model, "mlp.experts", ids, pre=True)
    n_experts, top_k = model.config.num_experts, model.config.num_experts_per_tok
    for i in gates:
        _, (logits, weights, index) = gates[i]
        assert logits.shape == (ids.numel(), n_experts)
        assert weights.shape == index.shape == (ids.numel(), top_k)
        # Raw logits, not probabilities: rows do not sum to 1, while their softmax does.
        assert not torch.allclose(logits.sum(-1), torch.ones(ids.numel()))
        probs = F.softmax(logits.float(), dim=-1)
        top = probs.topk(top_k, dim=-1)
        assert torch.equal(index, top.indices)
        expected = top.values / top.values.sum(-1, keepdim=True) if norm_topk_prob else top.values
        torch.testing.assert_close(weights, expected)
        assert (weights[:, :-1] >= weights[:, 1:]).all()  # slot 0 is the largest weight
        (hidden, called_index, called_weights), _ = experts[i]
        assert torch.equal(called_index, index) and torch.equal(called_weights, weights)


def test_offset_penalty_is_the_sum_of_squared_offsets_and_trains_only_offsets():
    model = _model("cross-layer")
    _perturb_offsets(model)
    expected = sum(layer.mlp.gate.offset.square().sum() for layer in model.model.layers)
    torch.testing.assert_close(model.offset_l2(), expected)
    model.offset_l2().backward()
    grads = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == {f"model.layers.{i}.mlp.gate.offset" for i in range(model.config.num_hidden_layers)}


def test_registered_with_auto_classes_and_round_trips(tmp_path):
    model = _model("cross-layer")
    _perturb_offsets(model)
    assert isinstance(AutoConfig.for_model("moe_crosslayer"), cross_layer.CrossLayerConfig)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert type(loaded) is cross_layer.CrossLayerForCausalLM
    assert loaded.config.routing_dim == model.config.routing_dim
    with torch.no_grad():
        assert torch.equal(loaded(_ids()).logits, model(_ids()).logits)


def _expert_output(experts, hidden, expert):
    """One expert's SwiGLU output, from the experts module's own weight tensors."""
    gate, up = F.linear(hidden, experts.gate_up_proj[expert]).chunk(2, dim=-1)
    return F.linear(experts.act_fn(gate) * up, experts.down_proj[expert])


@pytest.mark.parametrize("recipe", MODULES)
def test_capture_ids_and_weights_rebuild_the_moe_output(recipe):
    model = _model(recipe)
    if recipe == "cross-layer":
        _perturb_offsets(model)
    ids = _ids()
    blocks = _record(model, "mlp", ids)
    with capture(model) as cap, torch.no_grad():
        model(ids)
    record = cap.pop()
    assert record.layers == list(range(model.config.num_hidden_layers))
    for column, layer in enumerate(record.layers):
        args, out = blocks[layer]
        hidden = args[0].reshape(-1, model.config.hidden_size)  # (token, hidden)
        real = (out[0] if isinstance(out, tuple) else out).reshape(-1, model.config.hidden_size)
        experts = model.model.layers[layer].mlp.experts
        rebuilt = torch.zeros_like(real)
        with torch.no_grad():
            for slot in range(record.expert_id.shape[-1]):
                for expert in range(model.config.num_experts):
                    rows = torch.as_tensor(record.expert_id[:, column, slot] == expert)
                    if rows.any():
                        weight = torch.as_tensor(record.weight[rows, column, slot])[:, None]
                        rebuilt[rows] += weight * _expert_output(experts, hidden[rows], expert)
        torch.testing.assert_close(rebuilt, real, rtol=1e-5, atol=1e-6)


def test_cached_decoding_matches_a_full_forward():
    """generate() relies on the KV cache: the routing stream is per token, so caching keys suffices."""
    model = _model("cross-layer")
    _perturb_offsets(model)
    ids = _ids()
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        prefix = model(ids[:, :-1], use_cache=True)
        assert prefix.cache is not None and prefix.cache.get_seq_length() == ids.shape[1] - 1
        step = model(ids[:, -1:], cache=prefix.cache).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("module", [standard, cross_layer])
def test_both_recipes_run_grouped_experts_that_equal_the_eager_loop(module):
    """transformers gives the eager loop over experts to a model class whose own module lacks
    its decorator; ours says it supports grouped matrix products (2.6x faster on a GPU)."""
    model = module.build_model(module.preset("tiny"), 512, {"eos_token_id": 0}).eval()
    assert model.get_experts_implementation()[""] == "grouped_mm"
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        grouped = model(input_ids=ids).logits
        model.set_experts_implementation("eager")
        eager = model(input_ids=ids).logits
    torch.testing.assert_close(grouped, eager, rtol=1e-5, atol=1e-5)
