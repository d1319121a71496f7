"""The figures of the chapter "Which experts matter": builders over the tables of
:mod:`moe_lib.site.importance`, in the site's theme (:mod:`moe_lib.plots`).

Each takes a tidy table with a ``model`` column and returns a ``ggplot`` for the chapter
to facet; none saves or prints. Every effect is drawn beside its baseline: the criteria
beside random removal, a domain's own experts beside another domain's and random ones,
and every loss increase against 0 (the model untouched).
"""

from __future__ import annotations

import pandas as pd
from mizani.breaks import breaks_extended
from plotnine import (
    aes,
    coord_flip,
    geom_hline,
    geom_line,
    geom_linerange,
    geom_point,
    geom_pointrange,
    geom_ribbon,
    geom_vline,
    ggplot,
    labs,
    position_dodge,
    scale_colour_manual,
    scale_fill_manual,
    scale_x_continuous,
    scale_x_discrete,
)

from moe_lib.plots import GUIDE_GREY, LABEL_COLOURS, theme_moe
from moe_lib.site.importance import CRITERION_NAMES

# criterion -> (name on the page, colour); fixed, so every figure and model agrees
CRITERIA = {criterion: (CRITERION_NAMES[criterion], colour) for criterion, colour in
            zip(CRITERION_NAMES, [LABEL_COLOURS[0], LABEL_COLOURS[2], LABEL_COLOURS[3], LABEL_COLOURS[1]])}
RANDOM = "random (mean, 90 % of draws)"
KEPT_COLOURS = {"own domain's": LABEL_COLOURS[0], "another domain's": LABEL_COLOURS[1], "random": GUIDE_GREY}
LOSS_INCREASE = "loss increase (nats/token)"


def criterion_names(values) -> pd.Categorical:
    """Return criteria as their page names, in the fixed order of :data:`CRITERIA`."""
    names = [name for name, _ in CRITERIA.values()]
    return pd.Categorical([CRITERIA[v][0] for v in values], categories=names, ordered=True)


def pruning_curves_plot(versus: pd.DataFrame) -> ggplot:
    """Return the pruning curves: per n experts removed from every layer, each criterion's
    loss increase with its 95 % interval, over the random draws' mean (dashed) and 90 %
    range (grey band). Input: :func:`moe_lib.site.importance.criterion_vs_random`.
    Facet it by model."""
    table = versus.assign(criterion=criterion_names(versus["criterion"]), random=RANDOM)
    band = table.drop_duplicates(["model", "n_removed"])
    dodge = position_dodge(width=0.5)
    colours = {name: colour for name, colour in CRITERIA.values()}
    return (ggplot(table, aes("n_removed"))
            + geom_hline(yintercept=0, colour=GUIDE_GREY)
            + geom_ribbon(band, aes(ymin="random_lo", ymax="random_hi", fill="random"), alpha=0.35)
            + geom_line(band, aes(y="random_mean"), colour=GUIDE_GREY, linetype="dashed")
            + geom_line(aes(y="delta", colour="criterion"), position=dodge)
            + geom_pointrange(aes(y="delta", ymin="delta_lo", ymax="delta_hi", colour="criterion"), size=0.3,
                              position=dodge)
            + scale_colour_manual(values=colours, name="ranked by")
            + scale_fill_manual(values={RANDOM: GUIDE_GREY})
            + scale_x_continuous(breaks=sorted(table["n_removed"].unique()))
            + labs(x="experts removed from every MoE layer", y=LOSS_INCREASE, fill="")
            + theme_moe())


def scores_plot(scores: pd.DataFrame) -> ggplot:
    """Return each expert's causal score (slot dropped, 95 % interval) against its share of
    the layer's assignments, with the even share 1/E (dashed) and no loss change (0).
    Input: the ``scores`` table of :func:`moe_lib.site.importance.tables_from`. Facet it
    ``model ~ layer``."""
    table = scores[~scores["renormalize"].astype(bool)]
    even = table.groupby("model", observed=True)["expert"].transform("nunique")
    table = table.assign(even=1 / even)
    return (ggplot(table, aes("frequency", "loss_increase"))
            + geom_hline(yintercept=0, colour=GUIDE_GREY)
            + geom_vline(table.drop_duplicates(["model", "layer"]), aes(xintercept="even"), linetype="dashed",
                         colour=GUIDE_GREY)
            + geom_linerange(aes(ymin="loss_increase_lo", ymax="loss_increase_hi"), colour=LABEL_COLOURS[1],
                             alpha=0.6)
            + geom_point(colour=LABEL_COLOURS[1], size=1.4)
            + scale_x_continuous(breaks=breaks_extended(n=3), labels=lambda values: [f"{100 * v:g} %" for v in values])
            + labs(x="share of the layer's assignments (frequency)", y=LOSS_INCREASE)
            + theme_moe())


def keep_plot(summary: pd.DataFrame) -> ggplot:
    """Return per measured domain the loss increase when every layer keeps only the experts
    its own domain uses most (95 % interval), another domain's (mean, lowest to highest) or
    random ones removing as many (mean, 90 % of draws). Input:
    :func:`moe_lib.site.importance.keep_summary`. Facet it by model."""
    table = summary.assign(kept=pd.Categorical(summary["kept"], categories=list(KEPT_COLOURS), ordered=True))
    return (ggplot(table, aes("domain", "delta", colour="kept"))
            + geom_hline(yintercept=0, colour=GUIDE_GREY)
            + geom_pointrange(aes(ymin="delta_lo", ymax="delta_hi"), size=0.3, position=position_dodge(width=0.6))
            + scale_colour_manual(values=KEPT_COLOURS, name="experts kept")
            + labs(x="domain measured", y=LOSS_INCREASE)
            + theme_moe())


def top_k_plot(top_k: pd.DataFrame) -> ggplot:
    """Return per domain (and all pooled) the loss increase when each token keeps only its
    k' largest routes, renormalised, with its 95 % interval; 0 is the model's own k. Input:
    the ``top_k`` table of :func:`moe_lib.site.importance.tables_from`. Facet it by model."""
    table = top_k[top_k["study"] == "top_k"]
    table = table.assign(kept=pd.Categorical([f"k' = {k}" for k in table["top_k"]],
                                             categories=[f"k' = {k}" for k in sorted(table["top_k"].unique())]),
                         domain=pd.Categorical(table["domain"], categories=["all", *sorted(
                             set(table["domain"]) - {"all"})], ordered=True))
    return (ggplot(table, aes("domain", "delta", colour="kept"))
            + geom_hline(yintercept=0, colour=GUIDE_GREY)
            + geom_pointrange(aes(ymin="delta_lo", ymax="delta_hi"), size=0.3, position=position_dodge(width=0.5))
            + scale_colour_manual(values=LABEL_COLOURS, name="routes kept per token")
            + scale_x_discrete(limits=list(table["domain"].cat.categories)[::-1])
            + coord_flip()
            + labs(x="domain measured (all: pooled)", y=LOSS_INCREASE)
            + theme_moe())
