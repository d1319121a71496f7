"""Record every router decision from a model's real forward pass.

Two hooks per MoE layer, on the modules the family table names:

- a forward hook on the router keeps its raw ``router_logits`` (the first element of the
  ``(router_logits, top_k_weights, top_k_index)`` tuple every transformers 5 router returns);
- a forward pre-hook on the experts module keeps the ids and weights it is called with:
  exactly what the layer multiplies expert outputs by, after any normalisation or scaling.

Hooks only keep references to the tensors; sorting, stacking and the copy off the device
happen in :meth:`RoutingCapture.pop`, after the forward, so the forward never waits on them.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from moe_lib.core.schema import EXPERT_ID_DTYPE
from moe_lib.models.families import Family, family_of, n_experts, top_k


class CaptureError(RuntimeError):
    """A router or experts module did not behave as its family row says."""


@dataclass
class RoutingRecord:
    """What the routers did on some tokens: arrays over (token, layer, ...), on the CPU.

    ``token`` runs over every position of the batch, padding included, in the flattened
    (batch, position) order the MoE blocks see; the caller drops padding.
    """

    layers: list[int]  # absolute decoder-layer index of each MoE layer
    expert_id: np.ndarray  # (token, layer, slot) int16, slot 0 = largest weight
    weight: np.ndarray  # (token, layer, slot) float32, as the layer used them
    router_logits: np.ndarray | None  # (token, layer, expert) float32, raw
    shared_gate: np.ndarray | None  # (token, layer) float32, sigmoid of the shared gate
    # A CUDA event the arrays are complete after, when popped with ``non_blocking=True``.
    ready: object = None

    def wait(self) -> RoutingRecord:
        """Block until the arrays hold their values (a no-op unless copied without blocking)."""
        if self.ready is not None:
            self.ready.synchronize()
            self.ready = None
        return self


def find_moe_layers(model: torch.nn.Module, family: Family) -> list[int]:
    """Return the indices of the decoder layers that hold a router of ``family``."""
    n_layers = len(model.get_submodule(family.layers))
    found = []
    for layer in range(n_layers):
        try:
            model.get_submodule(family.router.format(layer=layer))
        except AttributeError:
            continue
        found.append(layer)
    if not found:
        raise CaptureError(f"{family.model_type}: no module at {family.router!r} in any layer")
    return found


def experts_argument_names(experts: torch.nn.Module) -> list[str]:
    """Return the names of an experts module's (hidden_states, ids, weights) arguments."""
    names = list(inspect.signature(experts.forward).parameters)[:3]
    if len(names) < 3:
        raise TypeError(f"{type(experts).__name__}.forward takes {names}, expected (hidden, ids, weights)")
    return names


def ids_and_weights_binder(experts: torch.nn.Module):
    """Return a function mapping an experts call's (args, kwargs) to (ids, weights)."""
    names = experts_argument_names(experts)

    def ids_and_weights(args, kwargs):
        bound = dict(zip(names, args)) | kwargs
        return bound[names[1]], bound[names[2]]

    return ids_and_weights


def with_routes(args: tuple, kwargs: dict, names: list[str], ids: torch.Tensor, weights: torch.Tensor):
    """Return an experts call's (args, kwargs) with its ids and weights replaced (``names``
    from :func:`experts_argument_names`), whether they came by position (as every family
    passes them today) or by keyword: what an intervening pre-hook returns."""
    if len(args) > 2:
        return (args[0], ids, weights, *args[3:]), kwargs
    return args[:1], {**kwargs, **dict(zip(names[1:], args[1:])), names[1]: ids, names[2]: weights}


class HookSet:
    """Hooks placed together on entry and removed together: on exit, on error, or by remove().

    Subclasses place theirs in ``_register``, appending each handle to ``self._handles``.
    """

    def __init__(self):
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _register(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self._register()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook placed."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class RoutingCapture(HookSet):
    """Context manager hooking every router of a model; see :func:`capture`."""

    def __init__(self, model: torch.nn.Module, router_logits: bool = True):
        super().__init__()
        self.model = model
        self.family = family_of(model.config)
        self.layers = find_moe_layers(model, self.family)
        self.top_k = top_k(model.config)
        self.n_experts = n_experts(model.config)
        self.keep_logits = router_logits
        self._seen: dict[str, dict[int, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))

    # -- hooks -----------------------------------------------------------------------------
    def _on_router(self, layer: int):
        def hook(module, args, output):
            logits = output[0] if isinstance(output, tuple) else output
            if logits.shape[-1] != self.n_experts:
                raise CaptureError(
                    f"layer {layer}: router output has {logits.shape[-1]} columns, "
                    f"expected {self.n_experts} experts"
                )
            if self.keep_logits:
                self._seen["router_logits"][layer].append(logits.detach().reshape(-1, self.n_experts))

        return hook

    def _on_experts(self, layer: int, ids_and_weights):
        def hook(module, args, kwargs):
            ids, weights = ids_and_weights(args, kwargs)
            if ids.shape != weights.shape or ids.shape[-1] != self.top_k:
                raise CaptureError(
                    f"layer {layer}: experts called with ids {tuple(ids.shape)} and weights "
                    f"{tuple(weights.shape)}, expected (token, {self.top_k}) each"
                )
            self._seen["expert_id"][layer].append(ids.detach())
            self._seen["weight"][layer].append(weights.detach())

        return hook

    def _on_shared_gate(self, layer: int):
        def hook(module, args, output):
            self._seen["shared_gate"][layer].append(torch.sigmoid(output.detach().float()).reshape(-1))

        return hook

    # -- placing the hooks ------------------------------------------------------------------
    def _register(self) -> None:
        get = self.model.get_submodule
        for layer in self.layers:
            router = get(self.family.router.format(layer=layer))
            experts = get(self.family.experts.format(layer=layer))
            self._handles.append(router.register_forward_hook(self._on_router(layer)))
            self._handles.append(
                experts.register_forward_pre_hook(
                    self._on_experts(layer, ids_and_weights_binder(experts)), with_kwargs=True
                )
            )
            if self.family.shared_gate:
                gate = get(self.family.shared_gate.format(layer=layer))
                self._handles.append(gate.register_forward_hook(self._on_shared_gate(layer)))

    # -- results ---------------------------------------------------------------------------
    def _stack(self, name: str) -> torch.Tensor | None:
        per_layer = self._seen.get(name)
        if not per_layer:
            return None
        counts = {layer: len(per_layer[layer]) for layer in self.layers}
        if len(set(counts.values())) != 1:
            raise CaptureError(f"{name}: layers were called unequal numbers of times: {counts}")
        # (token, layer, ...): calls concatenate along token, layers stack in order
        return torch.stack([torch.cat(per_layer[layer]) for layer in self.layers], dim=1)

    def pop(self, non_blocking: bool = False) -> RoutingRecord:
        """Return everything recorded since the last pop, slots sorted by weight, and clear.

        ``non_blocking=True`` on a CUDA model copies into pinned host memory without waiting
        for the device: the forward of the next batch can be queued at once, and the
        record's :meth:`RoutingRecord.wait` must be called before its arrays are read.
        """
        ids, weights = self._stack("expert_id"), self._stack("weight")
        if ids is None:
            raise CaptureError("nothing recorded: run a forward pass inside the capture")
        logits, shared = self._stack("router_logits"), self._stack("shared_gate")
        self._seen.clear()
        # DeepSeek and GLM routers return their k slots unsorted; the schema wants slot 0
        # to be the largest weight. A stable sort keeps the router's order among ties.
        weights = weights.float()
        order = weights.argsort(dim=-1, descending=True, stable=True)
        weights = weights.gather(-1, order)
        ids = ids.gather(-1, order)
        if non_blocking and ids.is_cuda:
            return self._pop_to_pinned(ids, weights, logits, shared)
        return RoutingRecord(
            layers=list(self.layers),
            expert_id=ids.to("cpu", torch.int64).numpy().astype(EXPERT_ID_DTYPE),
            weight=weights.cpu().numpy(),
            router_logits=None if logits is None else logits.float().cpu().numpy(),
            shared_gate=None if shared is None else shared.cpu().numpy(),
        )

    def _pop_to_pinned(self, ids, weights, logits, shared) -> RoutingRecord:
        """Copy device tensors into pinned host tensors without blocking; see :meth:`pop`."""

        def host(tensor: torch.Tensor | None) -> np.ndarray | None:
            if tensor is None:
                return None
            # torch caches pinned blocks, so a buffer per batch costs no cudaHostAlloc.
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            buffer.copy_(tensor, non_blocking=True)
            return buffer.numpy()

        # ids fit int16 (the schema's dtype): converting on the device quarters the copy.
        expert_id = host(ids.to(torch.int16))
        record = RoutingRecord(
            layers=list(self.layers),
            expert_id=expert_id.view(EXPERT_ID_DTYPE),
            weight=host(weights),
            router_logits=host(None if logits is None else logits.float()),
            shared_gate=host(shared),
        )
        record.ready = torch.cuda.Event()
        record.ready.record()
        return record


def capture(model: torch.nn.Module, router_logits: bool = True) -> RoutingCapture:
    """Return a context manager that records every router decision of ``model``.

    Use ``with capture(model) as cap: model(**batch)``, then ``cap.pop()`` for a
    :class:`RoutingRecord`. Hooks are removed on exit, also on error, and never change the
    model's outputs.

    Parameters
    ----------
    model : a transformers causal LM of a family in ``moe_lib.models.families.FAMILIES``.
    router_logits : also keep the raw (token, expert) router logits of every layer.
    """
    return RoutingCapture(model, router_logits=router_logits)
