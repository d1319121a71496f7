"""Held routes and the weight-matched control: a layer's own contribution apart from re-routing."""

import numpy as np
import pandas as pd
import pytest
import torch

from moe_lib.core.capture import capture, find_moe_layers
from moe_lib.interventions.ablation import Condition, grid_conditions, heldout_loss
from moe_lib.interventions.held_routes import RouteRecorder, hold_routes
from moe_lib.interventions.removal import ablate
from moe_lib.models.families import family_of, top_k
from moe_lib.models.tiny import tiny_model

TEXTS = ["def add(a, b):\n    return a + b\n" * 3, "The quick brown fox jumps over the lazy dog. " * 4,
         "Routing decides which experts see a token; " * 3]


def _logits(model, batch):
    with torch.inference_mode():
        return model(**batch).logits


def test_holding_every_layer_at_its_own_routes_changes_nothing(any_family_model, token_batch):
    model = any_family_model
    with RouteRecorder(model) as recorder:
        expected = _logits(model, token_batch)
    assert set(recorder.routes) == set(find_moe_layers(model, family_of(model.config)))
    with hold_routes(model, recorder.routes) as held:
        actual = _logits(model, token_batch)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert set(held.n_calls) == set(recorder.routes)  # every experts module was handed the routes


@pytest.mark.parametrize("family", ["olmoe", "qwen3_moe", "mixtral"])
def test_an_ablation_with_later_routes_held_keeps_their_choices(family, token_batch):
    model = tiny_model(family)
    layers = find_moe_layers(model, family_of(model.config))
    later = layers[1:]
    with RouteRecorder(model) as recorder, capture(model) as base_capture:
        _logits(model, token_batch)
    with ablate(model, layers=layers[:1], slots=0), capture(model) as free_capture:
        free = _logits(model, token_batch)
    with (ablate(model, layers=layers[:1], slots=0), hold_routes(model, {m: recorder.routes[m] for m in later}),
          capture(model) as held_capture):
        held = _logits(model, token_batch)
    base, free_record, held_record = base_capture.pop(), free_capture.pop(), held_capture.pop()
    # the capture of the held run records what the later layers really used: the baseline's routes
    np.testing.assert_array_equal(held_record.expert_id[:, 1:], base.expert_id[:, 1:])
    np.testing.assert_allclose(held_record.weight[:, 1:], base.weight[:, 1:])
    # while the free run re-routed some tokens there, and so ended elsewhere
    assert (free_record.expert_id[:, 1:] != base.expert_id[:, 1:]).any()
    assert not torch.equal(free, held)


def test_held_routes_refuse_another_batch_and_unknown_layers(token_batch):
    model = tiny_model("olmoe")
    with RouteRecorder(model) as recorder:
        _logits(model, token_batch)
    shorter = {name: value[:, :5] for name, value in token_batch.items()}
    with pytest.raises(ValueError, match="another batch"), hold_routes(model, recorder.routes):
        _logits(model, shorter)
    with pytest.raises(ValueError, match="held routes for layers \\[99\\]"):
        hold_routes(model, {99: recorder.routes[0]})


def test_weight_matched_control_removes_the_same_weight_and_no_expert(token_batch):
    model = tiny_model("olmoe")
    layer = find_moe_layers(model, family_of(model.config))[0]
    with ablate(model, layers=[layer], slots=0) as removal:
        _logits(model, token_batch)
    with ablate(model, layers=[layer], slots=0, weight_matched=True) as control:
        _logits(model, token_batch)
    removed, matched = removal.stats().iloc[0], control.stats().iloc[0]
    assert matched["n_removed"] == 0 and removed["n_removed"] > 0
    np.testing.assert_allclose(matched["removed_weight"], removed["removed_weight"], rtol=1e-6)
    np.testing.assert_allclose(matched["weight_after"], removed["weight_after"], rtol=1e-5)
    with RouteRecorder(model) as baseline:
        _logits(model, token_batch)
    with ablate(model, layers=[layer], slots=0, weight_matched=True), RouteRecorder(model) as scaled:
        _logits(model, token_batch)
    ids, weights = baseline.routes[layer]
    new_ids, new_weights = scaled.routes[layer]
    assert torch.equal(ids, new_ids)  # every route kept ...
    ratio = new_weights / weights
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))  # ... each token's scaled alike ...
    top = weights.max(dim=-1).values
    torch.testing.assert_close(new_weights.sum(-1), weights.sum(-1) - top)  # ... by its top-1 weight
    with pytest.raises(ValueError, match="weight_matched"):
        ablate(model, layers=[layer], slots=0, weight_matched=True, renormalize=True)


def test_layers_grid_runs_alike_with_and_without_reuse(tokenizer):
    model = tiny_model("olmoe")
    layers = find_moe_layers(model, family_of(model.config))
    conditions = grid_conditions(layers, top_k(model.config), "layers")
    held = [c for c in conditions if c.hold_later]
    assert len(held) == len(layers) - 1 and all(c.layers != (layers[-1],) for c in held)
    assert sum(c.weight_matched for c in conditions) == len(layers)
    kwargs = dict(batch_size=2, max_length=24, seed=1, progress=False)
    reused = heldout_loss(model, tokenizer, TEXTS, conditions, reuse=True, **kwargs)
    naive = heldout_loss(model, tokenizer, TEXTS, conditions, reuse=False, **kwargs)
    pd.testing.assert_frame_equal(reused.drop(columns="nll_sum"), naive.drop(columns="nll_sum"))
    np.testing.assert_allclose(reused["nll_sum"], naive["nll_sum"], rtol=1e-5)
    per_condition = reused.groupby("condition")["nll_sum"].sum()
    free, hold = Condition((layers[0],), "0"), Condition((layers[0],), "0", hold_later=True)
    assert per_condition[free.name] != per_condition[hold.name]  # holding later routes changes the loss
    assert "later routes held" in hold.name and "weight-matched" in Condition((0,), "0", weight_matched=True).name
