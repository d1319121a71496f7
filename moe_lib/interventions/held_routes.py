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

from moe_lib.core.capture import HookSet, experts_argument_names, find_moe_layers
from moe_lib.models.families import family_of


def _experts_module(model, layer: int) -> torch.nn.Module:
    return model.get_submodule(family_of(model.config).experts.format(layer=layer))


def with_routes(args: tuple, kwargs: dict, names: Sequence[str], ids: torch.Tensor, weights: torch.Tensor):
    """Return an experts call's (args, kwargs) with its ids and weights replaced, whether
    they came by position (as every family passes them today) or by keyword."""
    if len(args) > 2:
        return (args[0], ids, weights, *args[3:]), kwargs
    return args[:1], {**kwargs, **dict(zip(names[1:], args[1:])), names[1]: ids, names[2]: weights}


class RouteRecorder(HookSet):
    """Within: record the (ids, weights) each MoE layer's experts module receives, in
    ``routes[layer]`` (the last call's, detached copies)."""

    def __init__(self, model: torch.nn.Module, layers: Sequence[int] | None = None):
        super().__init__()
        self.model = model
        self.layers = list(find_moe_layers(model, family_of(model.config)) if layers is None else layers)
        self.routes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _record(self, layer: int, names: list[str]):
        def hook(module, args, kwargs):
            bound = dict(zip(names, args)) | kwargs
            self.routes[layer] = (bound[names[1]].detach().clone(), bound[names[2]].detach().clone())

        return hook

    def _register(self) -> None:
        for layer in self.layers:
            experts = _experts_module(self.model, layer)
            self._handles.append(experts.register_forward_pre_hook(
                self._record(layer, experts_argument_names(experts)), with_kwargs=True))


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

    def _hold(self, layer: int, names: list[str]):
        ids, weights = self.routes[layer]

        def hook(module, args, kwargs):
            given = (dict(zip(names, args)) | kwargs)[names[1]]
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
                self._hold(layer, experts_argument_names(experts)), with_kwargs=True, prepend=True))


def hold_routes(model: torch.nn.Module, routes: Mapping[int, tuple[torch.Tensor, torch.Tensor]]) -> HeldRoutes:
    """Return a context manager under which the MoE layers in ``routes`` use the recorded
    ``(ids, weights)`` (from :class:`RouteRecorder` on the same batch) whatever their routers
    choose: ``with hold_routes(model, {3: recorder.routes[3]}): model(**batch)``."""
    return HeldRoutes(model, routes)
