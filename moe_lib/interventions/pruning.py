"""Pruned checkpoints: the same model with some experts of every MoE layer taken out.

Pruning slices tensors, it computes nothing new: in each MoE layer, every tensor of the
router and of the experts module indexed by expert (first dim = the number of experts)
keeps the rows of the kept experts, the config says how many are left, and the model is
rebuilt from that config and loaded *strictly* with the sliced tensors, so a tensor left
unsliced (or sliced wrongly) fails the load instead of loading quietly. Its router then
scores only the kept experts and picks its top k among them, which is exactly
:func:`moe_lib.interventions.removal.ablate` with ``reroute=True``: the removed experts'
logits masked before the top-k. (Dropping their slots, the causal score's removal, keeps
the router's choice and differs.)

Only routers whose choice among the kept experts does not depend on the removed ones can
be sliced: softmax then top-k, or top-k then softmax (:data:`~moe_lib.interventions.removal.REROUTE_RULES`).
Group-limited routing (DeepSeek-V2/V3, GLM-4-MoE, dots1) picks within groups of a fixed
number of experts, and a correction bias (those and ERNIE 4.5) is tuned to the full set
of experts; both are refused.

The cross-layer recipe routes every layer through one shared matrix plus a per-layer
offset (:data:`SHARED_ROUTERS`). With different experts kept per layer, the shared matrix
keeps the first MoE layer's rows and each layer's offset absorbs the difference, so every
layer's logits over its kept experts are unchanged.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from moe_lib.core.capture import find_moe_layers
from moe_lib.interventions.removal import REROUTE_RULES
from moe_lib.models.families import FAMILIES, Family, family_of, n_experts, top_k

CRITERIA = ("frequency", "weight", "reap", "causal")
# criterion -> the variable of an importance Dataset ranking it (larger = more important)
CRITERION_VARIABLES = {"frequency": "frequency", "weight": "mean_weight", "reap": "reap", "causal": "loss_increase"}
# Routers shared by all layers: model_type -> (state key of the shared (expert, ...) rows, the
# per-layer router parameter added to them).
SHARED_ROUTERS = {"moe_crosslayer": ("model.shared_router.weight", "offset")}
REMOVED_FILE = "removed_experts.json"
_WHY_NOT = {
    "softmax_group_topk": "its routing is group-limited (experts are picked within groups of a fixed size)",
    "sigmoid_bias_group_topk": "its routing is group-limited and its correction bias is tuned to all its experts",
    "softmax_bias_topk": "its correction bias is tuned to all its experts",
}
_N_EXPERTS_ATTRS = ("num_local_experts", "n_routed_experts", "num_experts")


class UnprunableFamilyError(ValueError):
    """A model whose router cannot be sliced safely."""


def check_prunable(config) -> Family:
    """Return the family of ``config`` if its routers can be sliced; raise naming why not."""
    family = family_of(config)
    if family.scoring not in REROUTE_RULES or family.correction_bias:
        prunable = sorted(t for t, f in FAMILIES.items() if f.scoring in REROUTE_RULES and not f.correction_bias)
        raise UnprunableFamilyError(
            f"model_type {family.model_type!r} cannot be pruned safely: "
            f"{_WHY_NOT.get(family.scoring, 'its router depends on the number of experts')}. "
            f"Prunable families: {', '.join(prunable)}"
        )
    return family


def criterion_score(scores: xr.Dataset, criterion: str) -> xr.DataArray:
    """Return (layer, expert) how important each expert is by ``criterion`` (larger = more).

    ``"causal"`` is the loss increase with the expert's slot dropped, not renormalised.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion {criterion!r}: choose from {', '.join(CRITERIA)}")
    variable = CRITERION_VARIABLES[criterion]
    if variable not in scores:
        raise ValueError(f"criterion {criterion!r}: the scores have no {variable!r} (run the causal ablations)")
    score = scores[variable]
    return score.sel(renormalize=False, drop=True) if "renormalize" in score.dims else score


def least_important(score: xr.DataArray, n: int) -> dict[int, list[int]]:
    """Return ``{layer: the n experts with the lowest score}`` (ties: the lower id goes first)."""
    removed = {}
    for layer in score["layer"].to_numpy():
        values = score.sel(layer=layer).transpose("expert").to_numpy()
        order = np.argsort(values, kind="stable")
        removed[int(layer)] = sorted(int(score["expert"][i]) for i in order[:n])
    return removed


def check_keep(n_keep: int, config) -> int:
    """Return ``n_keep`` if it leaves 1 .. E - 1 experts and at least top_k; raise otherwise."""
    total, k = n_experts(config), top_k(config)
    if not isinstance(n_keep, (int, np.integer)) or not k <= n_keep < total:
        raise ValueError(f"--keep {n_keep!r}: keep between top_k={k} and {total - 1} of the {total} experts "
                         "(0 < N < E, and at least the k experts each token is routed to)")
    return int(n_keep)


def pruned_state_dict(model, removed: Mapping[int, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Return the model's state dict with the ``removed`` experts' rows taken out of every
    router and experts tensor of their layer (and of a shared router, see the module doc)."""
    family = family_of(model.config)
    total = n_experts(model.config)
    state = dict(model.state_dict())
    kept = {layer: [e for e in range(total) if e not in set(ids)] for layer, ids in removed.items()}
    shared_key, offset_name = SHARED_ROUTERS.get(family.model_type, (None, None))
    shared = state[shared_key] if shared_key else None
    for layer, rows in kept.items():
        index = torch.tensor(rows)
        prefixes = (family.router.format(layer=layer) + ".", family.experts.format(layer=layer) + ".")
        for key in [k for k in state if k.startswith(prefixes)]:
            tensor = state[key]
            if tensor.dim() == 0 or tensor.shape[0] != total:
                raise UnprunableFamilyError(f"{key}: shape {tuple(tensor.shape)} is not indexed by expert first; "
                                            "cannot slice it safely")
            if shared is not None and key == prefixes[0] + offset_name:
                # this layer's logits use shared + offset: keep their sum, against the new shared rows
                first_rows = torch.tensor(kept[min(kept)])
                state[key] = (shared + tensor).index_select(0, index) - shared.index_select(0, first_rows)
            else:
                state[key] = tensor.index_select(0, index)
    if shared is not None:
        state[shared_key] = shared.index_select(0, torch.tensor(kept[min(kept)]))
    return state


def prune_model(model, removed: Mapping[int, Sequence[int]]):
    """Return a new model: ``model`` with the ``removed`` experts taken out of their layers.

    Parameters
    ----------
    removed : ``{layer: expert ids}`` for every MoE layer, the same number in each (the
        config holds one expert count).
    """
    family = check_prunable(model.config)
    layers = find_moe_layers(model, family)
    total = n_experts(model.config)
    removed = {int(layer): sorted({int(e) for e in ids}) for layer, ids in removed.items()}
    if sorted(removed) != layers:
        raise ValueError(f"removed experts given for layers {sorted(removed)}; every MoE layer {layers} needs some")
    counts = {len(ids) for ids in removed.values()}
    if len(counts) != 1:
        raise ValueError(f"removed experts: {sorted(counts)} per layer; the config holds one count for all layers")
    bad = [e for ids in removed.values() for e in ids if not 0 <= e < total]
    if bad:
        raise ValueError(f"removed experts {bad}: ids must lie in 0..{total - 1}")
    n_keep = check_keep(total - counts.pop(), model.config)
    config = copy.deepcopy(model.config)
    for attr in _N_EXPERTS_ATTRS:
        if getattr(config, attr, None) == total:
            setattr(config, attr, n_keep)
    dtype = next(model.parameters()).dtype
    pruned = type(model)._from_config(config, dtype=dtype)
    pruned.load_state_dict(pruned_state_dict(model, removed), strict=True)
    return pruned.to(next(model.parameters()).device).eval()


def save_pruned(pruned, tokenizer, removed: Mapping[int, Sequence[int]], out: Path, about: dict) -> Path:
    """Write a pruned model, its tokenizer and ``removed_experts.json`` to the new folder ``out``.

    Written under ``out.partial`` and renamed into place: an interrupted write leaves no
    folder at ``out``. ``about`` (JSON-native: source model, criterion, ...) goes into the
    list of removed experts beside ``removed`` (``{layer: ids}``) and the kept ones.
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"--out {out}: already exists; nothing was overwritten")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    pruned.save_pretrained(partial)
    if tokenizer is not None:
        tokenizer.save_pretrained(partial)
    total = n_experts(pruned.config) + len(next(iter(removed.values())))
    listing = {**about, "n_experts_before": total, "n_experts_after": n_experts(pruned.config),
               "removed": {str(layer): sorted(map(int, ids)) for layer, ids in sorted(removed.items())},
               "kept": {str(layer): [e for e in range(total) if e not in set(ids)] for layer, ids in sorted(removed.items())}}
    (partial / REMOVED_FILE).write_text(json.dumps(listing, indent=2, sort_keys=True))
    os.rename(partial, out)
    return out
