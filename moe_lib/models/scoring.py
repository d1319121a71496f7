"""Each family's scoring rule, written out once: raw router logits to top-k ids and weights.

Capture never uses these to produce a trace (it records what the layer did). They are the
independent statement of each rule that the tests hold the captured ids and weights to,
and what an analysis uses to turn stored logits into the router's own scores.
"""

from __future__ import annotations

import torch

from moe_lib.models.families import (
    Family,
    n_experts,
    norm_topk_prob,
    routed_scaling,
    top_k,
)


def _group_mask(scores: torch.Tensor, n_group: int, topk_group: int, per_group) -> torch.Tensor:
    """Return a bool mask (token, expert) of the experts inside each token's best groups."""
    n_tokens, n_exp = scores.shape
    grouped = scores.view(n_tokens, n_group, n_exp // n_group)
    best_groups = per_group(grouped).topk(topk_group, dim=-1).indices
    mask = torch.zeros(n_tokens, n_group, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, best_groups, True)
    return mask.unsqueeze(-1).expand_as(grouped).reshape(n_tokens, n_exp)


def _correction_bias(router: torch.nn.Module, family: Family) -> torch.Tensor:
    """Return the router's bias that shifts the choice of experts but not their weights."""
    module_path, _, name = family.correction_bias.rpartition(".")
    module = router.get_submodule(module_path) if module_path else router
    return getattr(module, name).float().reshape(-1)


def select_experts(
    logits: torch.Tensor, family: Family, config, router: torch.nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(expert_id, weight)``, each (token, slot), sorted by weight, largest first.

    Parameters
    ----------
    logits : (token, expert) raw router logits.
    family, config : the model's Family row and transformers config.
    router : the router module, needed only where the family keeps a correction bias on it.
    """
    k = top_k(config)
    x = logits.float()
    rule = family.scoring
    if rule == "topk_softmax":
        top_logits, ids = x.topk(k, dim=-1)
        weights = top_logits.softmax(dim=-1)
    elif rule in ("softmax_topk", "softmax_group_topk", "softmax_bias_topk"):
        probs = x.softmax(dim=-1)
        choice = probs
        if rule == "softmax_bias_topk":
            choice = probs + _correction_bias(router, family).to(x.device)
        if rule == "softmax_group_topk" and getattr(config, "topk_method", "greedy") != "greedy":
            mask = _group_mask(probs, config.n_group, config.topk_group, lambda g: g.max(-1).values)
            choice = probs.masked_fill(~mask, 0.0)
        ids = choice.topk(k, dim=-1).indices
        weights = probs.gather(1, ids)
    elif rule == "sigmoid_bias_group_topk":
        scores = x.sigmoid()
        choice = scores + _correction_bias(router, family).to(x.device)
        n_group = int(getattr(config, "n_group", 1) or 1)
        topk_group = int(getattr(config, "topk_group", 1) or 1)
        mask = _group_mask(choice, n_group, topk_group, lambda g: g.topk(2, dim=-1).values.sum(-1))
        ids = choice.masked_fill(~mask, float("-inf")).topk(k, dim=-1).indices
        weights = scores.gather(1, ids)
    else:
        raise ValueError(f"unknown scoring rule {rule!r} for family {family.model_type}")
    if norm_topk_prob(config, family) and rule != "topk_softmax":
        weights = weights / weights.sum(dim=-1, keepdim=True)
    weights = weights * routed_scaling(config, family)
    order = weights.argsort(dim=-1, descending=True, stable=True)
    assert logits.shape[-1] == n_experts(config), "logits must cover every routed expert"
    return ids.gather(1, order), weights.gather(1, order)
