"""The recipe's share in what the default models' routing looks like (issue 12, item 5).

The default standard run balances every layer with a Switch loss at 0.1 and keeps router
logits small with a z-loss; a control run (preset ``default-weakbalance``) differs only in
those two: OLMoE's balance coefficient, 0.01, and no z-loss. Whatever differs between the
two runs' balance, router entropy and held-out loss is the recipe's doing, not a property
of MoE routing.
"""

from __future__ import annotations

import pandas as pd

from moe_lib.analysis import distribution

DEFAULT, CONTROL = "standard-default", "standard-default-weakbalance"


def recipe_control(models: tuple[str, str] = (DEFAULT, CONTROL)) -> pd.DataFrame:
    """Return one row per model and MoE layer: largest over mean load, normalised load
    entropy, dead experts, the median token's router entropy as a share of log2 E, and the
    run's final held-out loss (nats per token, all domains), each from the cache."""
    from moe_lib import site

    balance = site.per_model("load-balance", list(models), distribution.load_balance)
    entropy = site.per_model("router-entropy", list(models), distribution.router_entropy)
    entropy = entropy.assign(entropy_share=entropy["median"] / entropy["max_entropy_bits"])
    table = balance[["model", "layer", "max_over_mean", "normalised_entropy", "n_dead"]].merge(
        entropy[["model", "layer", "entropy_share"]], on=["model", "layer"])
    losses = {}
    for model in models:
        metrics = site.training_metrics(model)
        final = metrics[(metrics["step"] == metrics["step"].max()) & (metrics["domain"] == "all")]
        losses[model] = float(final["val_loss"].iloc[0])
    table["heldout_loss"] = table["model"].astype(str).map(losses)
    table["recipe"] = table["model"].astype(str).map(
        {DEFAULT: "balance 0.1, z-loss", CONTROL: "balance 0.01, no z-loss"}).fillna("")
    return table
