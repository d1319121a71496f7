"""Hold MoE layers at given routes: later layers route as the unablated model did.

Removing an expert in layer l changes the model twice: the layer's own output loses that
expert, and every later router then reads a different hidden state and may choose other
experts. To tell the two apart, an ablation can be run with the later layers' routes held:
each later MoE layer is handed, token by token, the expert ids and weights it used in the
unablated forward of the same batch (:class:`RouteRecorder` records them there), so the
only change left downstream is what flows through the residual stream. The difference
between the free and the held ablation is what re-routing in later layers adds (or saves).

Both hook the family's experts module, where ids and weights enter as arguments (as
:mod:`moe_lib.interventions.removal` does); the router itself still runs, and its choice is
replaced. Held routes are exact only for the same batch, in the same padding and order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from moe_lib.core.capture import (
    HookSet,
    experts_argument_names,
    find_moe_layers,
    ids_and_weights_binder,
    with_routes,
)
from moe_lib.models.families import family_of


def _experts_module(model, layer: int) -> torch.nn.Module:
    return model.get_submodule(family_of(model.config).experts.format(layer=layer))


class RouteRecorder(HookSet):
    """Within: record the (ids, weights) each MoE layer's experts module receives, in
    ``routes[layer]`` (the last call's, detached copies)."""

    def __init__(self, model: torch.nn.Module, layers: Sequence[int] | None = None):
        super().__init__()
        self.model = model
        self.layers = list(find_moe_layers(model, family_of(model.config)) if layers is None else layers)
        self.routes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _record(self, layer: int, ids_and_weights):
        def hook(module, args, kwargs):
            ids, weights = ids_and_weights(args, kwargs)
            self.routes[layer] = (ids.detach().clone(), weights.detach().clone())

        return hook

    def _register(self) -> None:
        for layer in self.layers:
            experts = _experts_module(self.model, layer)
            self._handles.append(experts.register_forward_pre_hook(
                self._record(layer, ids_and_weights_binder(experts)), with_kwargs=True))


class HeldRoutes(HookSet):
    """Within: the experts module of each layer in ``routes`` is called with the recorded
    ids and weights instead of the router's. A call with another number of tokens than was
    recorded is refused (the routes belong to another batch)."""

    def __init__(self, model: torch.nn.Module, routes: Mapping[int, tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.model = model
        moe_layers = find_moe_layers(model, family_of(model.config))
        unknown = sorted(set(routes) - set(moe_layers))
        if unknown:
            raise ValueError(f"held routes for layers {unknown}: the MoE layers are {list(moe_layers)}")
        self.routes = dict(routes)
        self.n_calls: dict[int, int] = {}

    def _hold(self, layer: int, experts: torch.nn.Module):
        ids, weights = self.routes[layer]
        names, ids_and_weights = experts_argument_names(experts), ids_and_weights_binder(experts)

        def hook(module, args, kwargs):
            given, _ = ids_and_weights(args, kwargs)
            if given.shape != ids.shape:
                raise ValueError(f"layer {layer}: held routes are for {tuple(ids.shape)} (token, slot), "
                                 f"the layer is called with {tuple(given.shape)}: another batch")
            self.n_calls[layer] = self.n_calls.get(layer, 0) + 1
            return with_routes(args, kwargs, names, ids.to(given.device), weights.to(given.device))

        return hook

    def _register(self) -> None:
        for layer in self.routes:
            experts = _experts_module(self.model, layer)
            # prepend: a capture on the same module then records the routes really used
            self._handles.append(experts.register_forward_pre_hook(
                self._hold(layer, experts), with_kwargs=True, prepend=True))


def hold_routes(model: torch.nn.Module, routes: Mapping[int, tuple[torch.Tensor, torch.Tensor]]) -> HeldRoutes:
    """Return a context manager under which the MoE layers in ``routes`` use the recorded
    ``(ids, weights)`` (from :class:`RouteRecorder` on the same batch) whatever their routers
    choose: ``with hold_routes(model, {3: recorder.routes[3]}): model(**batch)``."""
    return HeldRoutes(model, routes)
