"""Remove routed experts from a model's real forward pass: by rank, by id, in chosen layers.

:func:`ablate` is the intervening twin of :func:`moe_lib.core.capture.capture`. It hooks the same
module, the family's experts module, whose call ``experts(hidden_states, top_k_index,
top_k_weights)`` is where every family multiplies each expert's output by its weight. A
forward pre-hook hands the module rewritten weights: 0 for every removed (token, slot).
Since the whole output of an expert is multiplied by its weight, zeroing the weight removes
the expert entirely, including the bias terms GPT-OSS experts carry inside that output.

Names follow the trace schema: ``slot`` is the rank within the token's top-k by weight
(0 = largest, whatever order the router returned them in, as in a trace), ``expert`` ids
are the router's, and ``layer`` is the absolute decoder-layer index of an MoE layer.

Random controls. Every condition has a control that removes as many experts, in the same
layers, but not the ones the condition picks:

- by rank (``slots``): for each token and layer, the same number of slots drawn uniformly
  at random among the token's k routed slots. The count removed per token is matched
  exactly; only *which* of the routed experts go differs (for ``slots="all"`` the control
  is the condition itself, since all k of k are removed either way).
- by id (``experts``): the same number of expert ids, drawn once per layer uniformly among
  the other experts. The number of ids matches exactly; the number of routes removed
  matches only as far as the drawn experts are as loaded as the chosen ones, so
  :meth:`Ablation.stats` reports what was actually removed.

A weight-matched control (``weight_matched``) removes no expert: each token keeps all k
routes, each scaled down so the token loses the same total weight the condition would
remove. Against it, a removal shows what losing those experts costs beyond losing their
weight (with top-2, the random control is only the mean of the two ranks).

Two ways to remove an expert by id:

- drop its slot (the default): tokens whose top-k includes it lose that slot, and keep
  their other k - 1 experts (with ``renormalize``, their weights rescaled). The router
  itself is untouched: this measures what the expert contributes where it was chosen.
- mask and re-route (``reroute=True``): the removed experts' router logits are set to
  -inf before the family's scoring rule picks the top k (:func:`moe_lib.models.scoring.select_experts`),
  so each token gets k experts among those left, weighted as the router would weight
  them. This is what a pruned checkpoint computes (its router has no row for them), and
  it is defined only for the rules where a masked logit can never be chosen: softmax then
  top-k, and top-k then softmax (:data:`REROUTE_RULES`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from moe_lib.core.capture import (
    HookSet,
    experts_argument_names,
    find_moe_layers,
    ids_and_weights_binder,
    with_routes,
)
from moe_lib.models.families import family_of, n_experts, top_k
from moe_lib.models.scoring import select_experts

# Scoring rules under which a logit of -inf is never among the k chosen (given k experts
# are left): softmax gives it probability 0 and the top-k of raw logits never reaches it.
# A sigmoid with a correction bias would still choose it by its bias alone.
REROUTE_RULES = ("softmax_topk", "topk_softmax")


def select_layers(spec: str | Sequence[int], moe_layers: Sequence[int]) -> list[int]:
    """Return the absolute indices of the MoE layers that ``spec`` names.

    ``spec`` is ``"all"``, ``"first:N"`` or ``"last:N"`` (counted among MoE layers, so a
    model whose layer 0 is dense starts at layer 1), or a list of absolute layer indices.
    """
    moe_layers = list(moe_layers)
    if isinstance(spec, str):
        if spec == "all":
            return moe_layers
        end, _, count = spec.partition(":")
        if end in ("first", "last") and count.isdigit() and 1 <= int(count) <= len(moe_layers):
            n_layers = int(count)
            return moe_layers[:n_layers] if end == "first" else moe_layers[-n_layers:]
        raise ValueError(
            f"layers={spec!r}: expected 'all', 'first:N' or 'last:N' with 1 <= N <= {len(moe_layers)}, "
            "or a list of MoE layer indices"
        )
    chosen = sorted({int(layer) for layer in spec})
    not_moe = [layer for layer in chosen if layer not in moe_layers]
    if not chosen or not_moe:
        raise ValueError(f"layers={list(spec)!r}: {not_moe or 'empty'}; the MoE layers are {moe_layers}")
    return chosen


def select_slots(spec: int | str | Sequence[int], k: int) -> list[int]:
    """Return the ranks (0 = largest weight) that ``spec`` names among ``k`` slots.

    ``spec`` is a rank, a list of ranks, ``"all"``, or ``"N+"`` (rank N and every lower one).
    """
    if isinstance(spec, str):
        if spec == "all":
            return list(range(k))
        if spec.endswith("+") and spec[:-1].isdigit() and int(spec[:-1]) < k:
            return list(range(int(spec[:-1]), k))
        raise ValueError(f"slots={spec!r}: expected 'all', 'N+' with N < top_k={k}, or a list of ranks")
    ranks = sorted({int(spec)} if isinstance(spec, (int, np.integer)) else {int(s) for s in spec})
    if not ranks or ranks[0] < 0 or ranks[-1] >= k:
        raise ValueError(f"slots={spec!r}: ranks must lie in 0..{k - 1} (top_k={k})")
    return ranks


def _rank_of_each_slot(scores: torch.Tensor) -> torch.Tensor:
    """Return each slot's rank (0 = largest) along the last dim, ties kept in slot order."""
    order = scores.argsort(dim=-1, descending=True, stable=True)
    return order.argsort(dim=-1)


class Ablation(HookSet):
    """Context manager removing routed experts from a model; see :func:`ablate`."""

    def __init__(
        self,
        model: torch.nn.Module,
        layers: str | Sequence[int] = "all",
        slots: int | str | Sequence[int] | None = None,
        experts: Sequence[int] | Mapping[int, Sequence[int]] | None = None,
        renormalize: bool = False,
        shared: bool = False,
        random_control: bool = False,
        seed: int = 0,
        reroute: bool = False,
        weight_matched: bool = False,
    ):
        super().__init__()
        self.model = model
        self.family = family_of(model.config)
        self.top_k = top_k(model.config)
        self.n_experts = n_experts(model.config)
        self.moe_layers = find_moe_layers(model, self.family)
        if isinstance(experts, Mapping):
            # per-layer ids: the mapping names the layers (``layers`` must agree if not "all")
            by_layer = {int(layer): sorted({int(e) for e in ids}) for layer, ids in experts.items()}
            self.layers = select_layers(sorted(by_layer), self.moe_layers)
            if layers != "all" and select_layers(layers, self.moe_layers) != self.layers:
                raise ValueError(f"layers={layers!r} differ from the layers of experts={dict(experts)!r}")
            experts = sorted({e for ids in by_layer.values() for e in ids})
        else:
            self.layers = select_layers(layers, self.moe_layers)
            by_layer = None if experts is None else {layer: sorted({int(e) for e in experts}) for layer in self.layers}
        if slots is not None and experts is not None:
            raise ValueError("give slots or experts, not both")
        if slots is None and experts is None and not shared:
            raise ValueError("nothing to remove: give slots, experts, or shared=True")
        if shared and not self.family.shared_experts:
            raise ValueError(f"shared=True: family {self.family.model_type} has no shared experts")
        self.slots = None if slots is None else select_slots(slots, self.top_k)
        self.experts = None if experts is None else sorted({int(e) for e in experts})
        self.experts_by_layer = by_layer
        if self.experts is not None and not all(0 <= e < self.n_experts for e in self.experts):
            raise ValueError(f"experts={list(experts)!r}: ids must lie in 0..{self.n_experts - 1}")
        if reroute:
            self._check_reroute(renormalize, random_control)
        if weight_matched and (renormalize or random_control or reroute or (slots is None and experts is None)):
            raise ValueError("weight_matched: a control of its own; give slots or experts, without renormalize, "
                             "random_control or reroute")
        self.weight_matched = weight_matched
        self.reroute = reroute
        self.renormalize = renormalize
        self.shared = shared
        self.random_control = random_control
        self.seed = seed
        self._stats: dict[int, dict[str, torch.Tensor | int]] = {}
        self._generators: dict[int, torch.Generator] = {}
        self._router_logits: dict[int, torch.Tensor] = {}
        self.control_experts: dict[int, list[int]] = {}

    def _check_reroute(self, renormalize: bool, random_control: bool) -> None:
        if self.experts_by_layer is None:
            raise ValueError("reroute=True: give the experts to mask (by id), not slots")
        if renormalize:
            raise ValueError("reroute=True: the scoring rule weights the re-routed experts; renormalize must be False")
        if random_control:
            raise ValueError("reroute=True: no random control; draw the random experts yourself")
        if self.family.scoring not in REROUTE_RULES:
            raise ValueError(
                f"reroute=True: family {self.family.model_type} scores by {self.family.scoring!r}, under which a "
                f"masked expert can still be chosen; re-routing is defined for {REROUTE_RULES}"
            )
        crowded = {layer: ids for layer, ids in self.experts_by_layer.items() if self.n_experts - len(ids) < self.top_k}
        if crowded:
            raise ValueError(f"reroute=True: layers {sorted(crowded)} would keep fewer than top_k={self.top_k} experts")

    # -- which (token, slot) pairs go -------------------------------------------------------
    def _generator(self, layer: int) -> torch.Generator:
        # One stream per layer, so a layer draws the same numbers whether or not the
        # layers before it ran in this forward (the reusing grid skips them).
        if layer not in self._generators:
            self._generators[layer] = torch.Generator().manual_seed(self.seed * 1_000_003 + layer)
        return self._generators[layer]

    def _draw_control_experts(self) -> None:
        for layer in self.layers:
            chosen = self.experts_by_layer[layer]
            others = [e for e in range(self.n_experts) if e not in chosen]
            if len(others) < len(chosen):
                raise ValueError(f"random control: {len(chosen)} experts to match, only {len(others)} others")
            picked = torch.randperm(len(others), generator=self._generator(layer))[: len(chosen)]
            self.control_experts[layer] = sorted(others[int(i)] for i in picked)

    def removed(self, layer: int, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Return the bool (token, slot) mask of the routes this ablation removes in ``layer``."""
        if self.experts is not None:
            chosen = self.control_experts[layer] if self.random_control else self.experts_by_layer[layer]
            return torch.isin(ids, torch.tensor(chosen, dtype=ids.dtype, device=ids.device))
        if self.slots is None:
            return torch.zeros_like(ids, dtype=torch.bool)
        if self.random_control:
            # a uniformly random subset of len(slots) of the k slots, per token
            noise = torch.rand(ids.shape, generator=self._generator(layer)).to(ids.device)
            return _rank_of_each_slot(noise) < len(self.slots)
        ranks = _rank_of_each_slot(weights)
        return torch.isin(ranks, torch.tensor(self.slots, device=ranks.device))

    def _new_weights(self, layer: int, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        mask = self.removed(layer, ids, weights)
        kept = weights.masked_fill(mask, 0)
        if self.weight_matched:  # the same weight goes, spread over all k routes; no expert goes
            total = weights.float().sum(-1, keepdim=True)
            lost = weights.float().masked_fill(~mask, 0).sum(-1, keepdim=True)
            scale = torch.where(total > 0, 1 - lost / total.clamp_min(torch.finfo(torch.float32).tiny), 1.0)
            kept = (weights.float() * scale).to(weights.dtype)
        elif self.renormalize:
            total = weights.float().sum(-1, keepdim=True)
            kept_sum = kept.float().sum(-1, keepdim=True)
            # a token that lost all k keeps nothing: there is no weight left to rescale
            scale = torch.where(kept_sum > 0, total / kept_sum.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
            kept = (kept.float() * scale).to(weights.dtype)
        stats = self._stats.setdefault(layer, {"n_calls": 0, "n_tokens": 0})
        stats["n_calls"] += 1
        stats["n_tokens"] += ids.shape[0]
        # Kept as tensors (no .item()): reading them would make every forward wait on the GPU.
        for name, value in (
            ("n_removed", torch.zeros((), dtype=torch.long) if self.weight_matched else mask.sum()),
            ("removed_weight", weights.float().masked_fill(~mask, 0).sum()),
            ("weight_before", weights.float().sum()),
            ("weight_after", kept.float().sum()),
        ):
            stats[name] = stats.get(name, 0) + value
        return kept

    # -- hooks -------------------------------------------------------------------------------
    def _rerouted(self, layer: int, ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the ids and weights the family's rule picks once this layer's experts are masked."""
        logits = self._router_logits.pop(layer).reshape(ids.shape[0], self.n_experts)
        masked = logits.float().index_fill(-1, torch.tensor(self.experts_by_layer[layer], device=logits.device),
                                           float("-inf"))
        new_ids, new_weights = select_experts(masked, self.family, self.model.config)
        stats = self._stats.setdefault(layer, {"n_calls": 0, "n_tokens": 0})
        stats["n_calls"] += 1
        stats["n_tokens"] += ids.shape[0]
        removed = torch.isin(ids, torch.tensor(self.experts_by_layer[layer], dtype=ids.dtype, device=ids.device))
        for name, value in (
            ("n_removed", removed.sum()),
            ("removed_weight", weights.float().masked_fill(~removed, 0).sum()),
            ("weight_before", weights.float().sum()),
            ("weight_after", new_weights.sum()),
        ):
            stats[name] = stats.get(name, 0) + value
        return new_ids.to(ids.dtype), new_weights.to(weights.dtype)

    def _on_router(self, layer: int):
        def hook(module, args, output):
            self._router_logits[layer] = (output[0] if isinstance(output, tuple) else output).detach()

        return hook

    def _on_experts(self, layer: int, experts: torch.nn.Module):
        names, ids_and_weights = experts_argument_names(experts), ids_and_weights_binder(experts)

        def hook(module, args, kwargs):
            ids, weights = ids_and_weights(args, kwargs)
            if self.reroute:
                ids, new = self._rerouted(layer, ids, weights)
            else:
                new = self._new_weights(layer, ids, weights)
            return with_routes(args, kwargs, names, ids, new)

        return hook

    @staticmethod
    def _zero_output(module, args, output):
        return torch.zeros_like(output)

    def _register(self) -> None:
        self._stats.clear()
        self._generators.clear()
        if self.experts is not None and self.random_control:
            self._draw_control_experts()
        self._router_logits.clear()
        get = self.model.get_submodule
        for layer in self.layers:
            if self.reroute:
                router = get(self.family.router.format(layer=layer))
                self._handles.append(router.register_forward_hook(self._on_router(layer)))
            if self.slots is not None or self.experts is not None:
                experts = get(self.family.experts.format(layer=layer))
                # prepend: any capture hook on the same module then records the weights
                # the layer really uses, whichever context was entered first
                self._handles.append(
                    experts.register_forward_pre_hook(
                        self._on_experts(layer, experts), with_kwargs=True, prepend=True
                    )
                )
            if self.shared:
                module = get(self.family.shared_experts.format(layer=layer))
                self._handles.append(module.register_forward_hook(self._zero_output))

    def silent_layers(self) -> list[int]:
        """Return the ablated layers whose experts module was never called since entering.

        A fused kernel that replaces the whole MoE block (e.g. a hub kernel for GPT-OSS)
        bypasses the hook: an ablation there would silently remove nothing.
        """
        hooked = self.slots is not None or self.experts is not None
        return [layer for layer in self.layers if hooked and not self._stats.get(layer, {}).get("n_calls")]

    def stats(self) -> pd.DataFrame:
        """Return per layer what was removed since entering: one row per ablated layer.

        Columns: ``layer``, ``n_calls``, ``n_tokens`` (every position the block saw, padding
        included), ``n_removed`` (routes zeroed), ``removed_weight``, ``weight_before`` and
        ``weight_after`` (sums over tokens and slots of the routing weights).
        """
        rows = []
        for layer in self.layers:
            stats = self._stats.get(layer, {"n_calls": 0, "n_tokens": 0})
            row = {"layer": layer}
            for name in ("n_calls", "n_tokens", "n_removed", "removed_weight", "weight_before", "weight_after"):
                value = stats.get(name, 0)
                row[name] = value.item() if isinstance(value, torch.Tensor) else value
            rows.append(row)
        return pd.DataFrame(rows)


def ablate(
    model: torch.nn.Module,
    layers: str | Sequence[int] = "all",
    slots: int | str | Sequence[int] | None = None,
    experts: Sequence[int] | Mapping[int, Sequence[int]] | None = None,
    renormalize: bool = False,
    shared: bool = False,
    random_control: bool = False,
    seed: int = 0,
    reroute: bool = False,
    weight_matched: bool = False,
) -> Ablation:
    """Return a context manager under which ``model`` runs with some routed experts removed.

    ``with ablate(model, layers="last:4", slots=0): model(**batch)`` runs the model without
    each token's top-1 expert in its last four MoE layers. Hooks are removed on exit, also
    on error; it nests with :func:`moe_lib.core.capture.capture` in either order, and capture then
    records the weights the layers really used (0 for removed routes).

    Parameters
    ----------
    model : a transformers causal LM of a family in ``moe_lib.models.families.FAMILIES``.
    layers : ``"all"``, ``"first:N"``, ``"last:N"`` (N counted among MoE layers), or a list
        of absolute MoE-layer indices.
    slots : ranks to remove, 0 = the largest weight: an int, a list, ``"N+"`` (rank N and
        below) or ``"all"``.
    experts : expert ids to remove wherever they are routed to (instead of ``slots``): one
        list for every layer of ``layers``, or a mapping ``{layer: ids}`` (its keys are then
        the layers).
    renormalize : rescale each token's remaining weights so they sum to the sum of all k
        original weights (a token with none left keeps none).
    shared : also zero the output of the layer's shared expert(s) (Qwen2-MoE, DeepSeek, ...);
        alone, it removes only the shared experts.
    random_control : remove as many experts, chosen at random (see the module docstring).
    seed : seeds the random control, one stream per layer.
    reroute : with ``experts``, mask the removed experts' router logits and let the family's
        rule pick k among the others (what a pruned checkpoint does) instead of dropping
        their slots; see the module docstring.
    weight_matched : remove no expert; scale each token's routes down by the weight share
        the condition would remove (the control of a removal; see the module docstring).
    """
    return Ablation(model, layers, slots, experts, renormalize, shared, random_control, seed, reroute, weight_matched)
