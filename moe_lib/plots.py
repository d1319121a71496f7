"""The site's figures: one theme, fixed scales for layers and experts, and one builder per
figure. Builders take the tidy tables of ``moe_lib.analysis`` and return a ``ggplot``;
they never save or print (the chapter shows the value, tests draw it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from plotnine import (
    aes,
    coord_fixed,
    element_blank,
    element_rect,
    element_text,
    facet_wrap,
    geom_boxplot,
    geom_col,
    geom_hline,
    geom_line,
    geom_linerange,
    geom_path,
    geom_point,
    geom_pointrange,
    geom_segment,
    geom_text,
    geom_tile,
    ggplot,
    guide_legend,
    guides,
    labs,
    scale_colour_brewer,
    scale_colour_cmap_d,
    scale_fill_cmap,
    scale_linetype_manual,
    scale_size_continuous,
    scale_x_continuous,
    scale_y_continuous,
    theme,
    theme_bw,
)

# Layers are ordered by absolute index and coloured along viridis, experts by index.
LAYER_CMAP = "viridis"
HEATMAP_CMAP = "viridis"
# A qualitative palette for meanings and domains (a handful of values per figure).
LABEL_PALETTE = "Set1"
OBSERVED_VS_CHANCE = {"observed": "solid", "chance": "dashed"}


def theme_moe(base_size: float = 10) -> theme:
    """Return the project theme: ``theme_bw`` with light facet strips and the legend below."""
    return theme_bw(base_size=base_size) + theme(
        strip_background=element_rect(fill="#f0f0f0", colour="#bdbdbd"),
        strip_text=element_text(size=base_size * 0.9),
        panel_grid_minor=element_blank(),
        legend_position="bottom",
        figure_size=(7, 4),
    )


def as_layer_factor(values) -> pd.Categorical:
    """Return layer indices as an ordered categorical, so layers keep numeric order."""
    values = np.asarray(values)
    order = np.unique(values)
    return pd.Categorical(values.astype(str), categories=order.astype(str), ordered=True)


def scale_colour_layer():
    """Return the fixed colour scale for layers (apply to ``as_layer_factor`` values)."""
    return scale_colour_cmap_d(LAYER_CMAP, name="MoE layer")


def scale_x_expert(n_experts: int):
    """Return an x scale with expert indices in order, labelled at a readable spacing."""
    step = max(1, int(np.ceil(n_experts / 16)))
    return scale_x_continuous(breaks=list(range(0, n_experts, step)), expand=(0, 0.5))


def scale_x_layer(layers):
    """Return an x scale with a break at every MoE layer index present."""
    return scale_x_continuous(breaks=sorted({int(v) for v in layers}))


def observed_and_chance(table: pd.DataFrame, measures: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """Return ``table`` in long form: one row per measure and kind ("observed" or "chance"),
    the value in ``value``; ``measures`` maps a measure's title to its two column names."""
    parts = [
        table.assign(measure=title, kind=kind, value=table[column])
        for title, columns in measures.items()
        for kind, column in zip(("observed", "chance"), columns)
    ]
    return pd.concat(parts, ignore_index=True)


def observed_vs_chance_plot(long: pd.DataFrame, y_title: str, colour: str | None = None,
                            x_title: str = "MoE layer (index)") -> ggplot:
    """Return lines of ``value`` by layer from ``observed_and_chance`` output: observed
    solid, chance dashed, optionally coloured by one column."""
    mapping = aes(x="layer", y="value", linetype="kind", colour=colour) if colour else \
        aes(x="layer", y="value", linetype="kind")
    figure = (
        ggplot(long, mapping)
        + geom_line()
        + geom_point()
        + scale_linetype_manual(values=OBSERVED_VS_CHANCE, name="")
        + scale_x_layer(long["layer"])
        + labs(x=x_title, y=y_title)
        + theme_moe()
    )
    if colour:
        figure += scale_colour_brewer(type="qual", palette=LABEL_PALETTE, name="" if colour == "measure" else colour)
    return figure


def weight_by_slot_plot(table: pd.DataFrame) -> ggplot:
    """Return boxplots of routing weight by slot, faceted by layer, from ``weight_by_slot``.

    Boxes span the quartiles, whiskers the 5 % and 95 % quantiles (precomputed, so the
    figure is as cheap for 4M tokens as for 4 thousand).
    """
    data = table.assign(slot_label=lambda t: pd.Categorical(t["slot"].astype(str),
                                                             t["slot"].sort_values().unique().astype(str)))
    return (
        ggplot(data, aes(x="slot_label", ymin="q05", lower="q25", middle="median", upper="q75", ymax="q95"))
        + geom_boxplot(stat="identity", fill="#9ecae1")
        + facet_wrap("layer", labeller="label_both")
        + labs(x="Slot (rank in the top-k, 0 = largest weight)", y="Routing weight (unitless)")
        + theme_moe()
    )


def expert_load_plot(load: pd.DataFrame) -> ggplot:
    """Return bars of each expert's share of assignments per layer, from ``expert_load``,
    with the uniform share 1/E dashed."""
    n_experts = int(load["expert"].max()) + 1
    return (
        ggplot(load, aes(x="expert", y="share"))
        + geom_col(fill="#3182bd")
        + geom_hline(aes(yintercept="uniform_share"), linetype="dashed", colour="#636363")
        + facet_wrap("layer", labeller="label_both")
        + scale_x_expert(n_experts)
        + labs(x="Expert (index)", y="Share of the layer's assignments")
        + theme_moe()
    )


def router_entropy_plot(table: pd.DataFrame) -> ggplot:
    """Return per-layer router entropy (median, quartiles, 5-95 % range) from
    ``router_entropy``, with the maximum possible entropy dashed."""
    source = "full router distribution" if table["source"].iloc[0] == "router_logits" else "renormalised top-k weights"
    return (
        ggplot(table, aes(x="layer"))
        + geom_linerange(aes(ymin="q05", ymax="q95"), colour="#9ecae1", size=1)
        + geom_pointrange(aes(y="median", ymin="q25", ymax="q75"), colour="#08519c")
        + geom_hline(aes(yintercept="max_entropy_bits"), linetype="dashed", colour="#636363")
        + labs(x="MoE layer (index)", y=f"Router entropy (bits, {source})")
        + scale_x_layer(table["layer"])
        + theme_moe()
    )


def consecutive_routing_plot(table: pd.DataFrame) -> ggplot:
    """Return adjacent-token expert sharing per layer against chance, from
    ``consecutive_routing``: same top-1 expert, and top-k overlap."""
    long = observed_and_chance(table, {
        "Same top-1 expert": ("p_same_top1", "p_same_top1_chance"),
        "Top-k overlap |A∩B|/k": ("topk_overlap", "topk_overlap_chance"),
    })
    return observed_vs_chance_plot(long, "Share of adjacent token pairs") + facet_wrap("measure")


def saturation_plot(table: pd.DataFrame, x: str = "checkpoint", x_title: str = "Training tokens") -> ggplot:
    """Return router saturation per layer through training, from ``router_saturation``:
    top-k overlap and top-1 agreement with the final checkpoint, chance dashed.

    ``x`` names a numeric column (the checkpoint key, or training tokens joined by the caller).
    """
    long = pd.concat(
        [
            table.assign(measure="Top-k overlap with final", value=table["topk_overlap"]),
            table.assign(measure="Top-1 agreement with final", value=table["top1_agreement"]),
        ]
    ).assign(layer=lambda t: as_layer_factor(t["layer"]))
    chance = table.assign(measure="Top-k overlap with final", value=table["topk_overlap_chance"],
                          layer=lambda t: as_layer_factor(t["layer"]))
    return (
        ggplot(long, aes(x=x, y="value", colour="layer"))
        + geom_line()
        + geom_point(size=1)
        + geom_line(data=chance, linetype="dashed")
        + facet_wrap("measure")
        + scale_colour_layer()
        + scale_y_continuous(limits=(0, 1))
        + labs(x=x_title, y="Saturation (share of the final choice)")
        + theme_moe()
    )


def expert_polar_plot(distribution: pd.DataFrame, layer: int) -> ggplot:
    """Return radial bars of a token's expert distribution, one panel per checkpoint.

    plotnine has no ``coord_polar``: expert e is drawn as a segment from the centre at
    angle 2 pi e / E (expert 0 at the top, clockwise), its length the share of the token's
    occurrences sent there; the dotted circle marks the uniform share 1/E.
    Input: ``token_expert_distribution`` rows (one token id).
    """
    data = distribution[distribution["layer"] == layer].copy()
    if data["token_id"].nunique() != 1:
        raise ValueError(f"expert_polar_plot draws one token; got token ids {sorted(data['token_id'].unique())}")
    n_experts = int(data["expert"].max()) + 1
    angle = 2 * np.pi * data["expert"] / n_experts
    data["x"], data["y"] = data["share"] * np.sin(angle), data["share"] * np.cos(angle)
    data["checkpoint"] = pd.Categorical(data["checkpoint"], categories=pd.unique(data["checkpoint"]))
    theta = np.linspace(0, 2 * np.pi, 100)
    circle = pd.DataFrame({"x": np.sin(theta) / n_experts, "y": np.cos(theta) / n_experts})
    # Expert indices just outside the longest bar, so each direction can be read.
    radius = 1.12 * data["share"].max()
    ticks = pd.DataFrame({"expert": np.arange(n_experts)})
    ticks["x"] = radius * np.sin(2 * np.pi * ticks["expert"] / n_experts)
    ticks["y"] = radius * np.cos(2 * np.pi * ticks["expert"] / n_experts)
    return (
        ggplot(data)
        + geom_path(aes("x", "y"), data=circle, linetype="dotted", colour="#969696")
        + geom_segment(aes(x=0, y=0, xend="x", yend="y"), colour="#08519c", size=1.2)
        + geom_text(aes("x", "y", label="expert"), data=ticks, size=6, colour="#636363")
        + facet_wrap("checkpoint", labeller="label_both")
        + coord_fixed()
        + labs(x="", y="", title=f"Token {data['token_str'].iloc[0]!r}, layer {layer}: share per expert "
               "(angle = expert index, length = share)")
        + theme_moe()
        + theme(axis_text=element_blank(), axis_ticks=element_blank(), panel_grid=element_blank())
    )


def meaning_flow_plot(flow: pd.DataFrame, min_share: float = 0.02) -> ggplot:
    """Return the flow of a polysemantic token's top-1 expert across layers, one panel per
    meaning, from ``meaning_flow``: a segment per transition, thicker when more of the
    meaning's occurrences take it. Transitions below ``min_share`` are left out."""
    data = flow[flow["share"] >= min_share]
    n_experts = int(max(flow["expert"].max(), flow["next_expert"].max())) + 1
    return (
        ggplot(data, aes(x="layer", y="expert", xend="next_layer", yend="next_expert"))
        + geom_segment(aes(size="share", colour="meaning"), alpha=0.6)
        + geom_point(aes(size="share", colour="meaning"))
        + facet_wrap("meaning")
        + scale_size_continuous(range=(0.3, 3))
        + scale_x_layer(flow["layer"].tolist() + flow["next_layer"].tolist())
        + scale_colour_brewer(type="qual", palette=LABEL_PALETTE)
        + scale_y_continuous(breaks=list(range(0, n_experts, max(1, n_experts // 8))))
        + labs(x="MoE layer (index)", y="Top-1 expert (index)", size="Share of the meaning's occurrences")
        + theme_moe()
    )


def specialization_js_plot(table: pd.DataFrame) -> ggplot:
    """Return context and token-id specialization per layer against their baselines, from
    ``specialization_js`` (observed solid, baseline mean dashed)."""
    long = observed_and_chance(table, {
        "Context (meaning vs token)": ("context_js", "context_js_shuffled"),
        "Token id (token vs all tokens)": ("token_js", "token_js_random"),
    })
    return observed_vs_chance_plot(long, "Jensen-Shannon distance (base 2, 0-1)", colour="measure")


def expert_continuity_plot(table: pd.DataFrame) -> ggplot:
    """Return the NMI between consecutive layers' top-1 experts against the shuffled
    baseline, from ``expert_continuity``."""
    long = observed_and_chance(table, {"NMI": ("nmi", "nmi_shuffled")})
    return observed_vs_chance_plot(long, "Normalised mutual information (0-1)",
                                   x_title="MoE layer l (index; pair l, l+1)")


def path_heatmap(windows: pd.DataFrame, value: str = "normalised_entropy") -> ggplot:
    """Return a heatmap over (first layer, window length) of one ``path_windows`` column,
    with the values printed in the tiles."""
    titles = {
        "normalised_entropy": "Normalised path entropy H / (length log2 E)",
        "coverage_top10": "Share of tokens on the top 10 % of paths",
        "coverage_top50": "Share of tokens on the top 50 % of paths",
        "n_paths_seen": "Distinct paths seen (count)",
    }
    data = windows.assign(text=windows[value].map(lambda v: f"{v:.2g}"))
    return (
        ggplot(data, aes(x="first_layer", y="length", fill=value))
        + geom_tile()
        + geom_text(aes(label="text"), size=7, colour="white")
        + scale_fill_cmap(HEATMAP_CMAP, name=titles.get(value, value))
        # both axes count layers: breaks at the tiles, never the default half-integers
        + scale_x_layer(data["first_layer"])
        + scale_y_continuous(breaks=sorted({int(v) for v in data["length"]}))
        + labs(x="First layer of the window (index)", y="Window length (MoE layers)")
        + theme_moe()
    )


def route_map_plot(table: pd.DataFrame, colour: str = "domain") -> ggplot:
    """Return the UMAP map of routes, one panel per model, points coloured by ``colour``;
    the axes carry no units, so they are left blank."""
    return (
        ggplot(table, aes(x="x", y="y", colour=colour))
        + geom_point(size=0.6, alpha=0.5, stroke=0)
        + facet_wrap("~model", scales="free")
        + scale_colour_brewer(type="qual", palette=LABEL_PALETTE, name=colour.capitalize())
        + guides(colour=guide_legend(override_aes={"size": 3, "alpha": 1}))  # legible keys
        + labs(x="UMAP 1", y="UMAP 2")
        + theme_moe()
        + theme(axis_text=element_blank(), axis_ticks=element_blank(), panel_grid=element_blank())
    )


def domain_share_heatmap(share: pd.DataFrame, layer: int, label: str = "domain") -> ggplot:
    """Return a heatmap of each expert's share of a label value's tokens over the uniform
    share k/E (1 = no preference), for one layer, from ``domain_expert_share``."""
    data = share[share["layer"] == layer]
    n_experts = int(data["expert"].max()) + 1
    return (
        ggplot(data, aes(x="expert", y=label, fill="ratio"))
        + geom_tile()
        + scale_fill_cmap(HEATMAP_CMAP, name="Share over uniform k/E")
        + scale_x_expert(n_experts)
        + labs(x="Expert (index)", y=label.capitalize(), title=f"Layer {layer}")
        + theme_moe()
    )


def tv_distance_plot(table: pd.DataFrame, label: str = "domain") -> ggplot:
    """Return each label value's TV distance from the pooled routing per layer, with the
    shuffled-label baseline dashed, from ``domain_tv_distance``."""
    long = observed_and_chance(table, {"TV distance": ("tv_distance", "tv_shuffled")})
    return observed_vs_chance_plot(long, "Total-variation distance from pooled (0-1)", colour=label)


def vocabulary_specialization_plot(table: pd.DataFrame) -> ggplot:
    """Return per layer the occurrence-weighted mean vocabulary specialization against the
    shuffled-id baseline, from ``vocabulary_specialization``."""
    weights = table["n_occurrences"]
    summary = (
        table.assign(observed=table["specialization"] * weights,
                     chance=table["specialization_shuffled"] * weights, weight=weights)
        .groupby("layer", as_index=False)[["observed", "chance", "weight"]].sum()
    )
    summary[["observed", "chance"]] = summary[["observed", "chance"]].div(summary["weight"], axis=0)
    long = observed_and_chance(summary, {"Vocabulary specialization": ("observed", "chance")})
    return observed_vs_chance_plot(long, "Share of a token id's occurrences on its top expert")


def coactivation_heatmap(table: pd.DataFrame, layer: int, value: str = "p_j_given_i") -> ggplot:
    """Return a heatmap of co-activation P(E_j | E_i) (or ``lift``) for one layer, from
    ``coactivation``; the diagonal is empty."""
    data = table[table["layer"] == layer]
    n_experts = int(max(data["expert_i"].max(), data["expert_j"].max())) + 1
    title = {"p_j_given_i": "P(expert j | expert i)", "lift": "Lift over independence"}.get(value, value)
    return (
        ggplot(data, aes(x="expert_j", y="expert_i", fill=value))
        + geom_tile()
        + scale_fill_cmap(HEATMAP_CMAP, name=title)
        + scale_x_expert(n_experts)
        + scale_y_continuous(breaks=list(range(0, n_experts, max(1, int(np.ceil(n_experts / 16))))))
        + coord_fixed()
        + labs(x="Expert j (index)", y="Expert i (index)", title=f"Layer {layer}")
        + theme_moe()
        + theme(figure_size=(5.5, 5.5))
    )
