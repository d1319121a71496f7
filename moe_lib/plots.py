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
    facet_grid,
    facet_wrap,
    geom_boxplot,
    geom_hline,
    geom_line,
    geom_linerange,
    geom_point,
    geom_pointrange,
    geom_segment,
    geom_text,
    geom_tile,
    ggplot,
    guide_colorbar,
    guide_legend,
    guides,
    label_both,
    labeller,
    labs,
    scale_colour_identity,
    scale_colour_manual,
    scale_fill_cmap,
    scale_fill_gradient2,
    scale_linetype_manual,
    scale_size_continuous,
    scale_x_continuous,
    scale_x_discrete,
    scale_y_continuous,
    theme,
    theme_bw,
)
from plotnine.options import set_option

# -- sizes ------------------------------------------------------------------------------------
# A figure's PNG is as many pixels wide as the page shows it, so its text is drawn at the size
# it is read: at 96 dots per inch an inch is 96 CSS pixels and a point 1.33 px. The site's
# text column is about 700 px wide at a 1280 px window (Quarto's docked sidebar and margin
# table of contents); a wide figure takes the column and the right margin (``column:
# page-right``, about 930 px). The smallest text, axis labels at 0.8 x 11 pt, is 11.7 px.
SITE_DPI = 96
COLUMN_WIDTH = 7.0  # inches: 672 px
PAGE_WIDTH = 9.5  # inches: 912 px, for cells with `#| column: page-right`
BASE_SIZE = 11  # points
DEFAULT_HEIGHT = 4.2  # inches

# -- colours ----------------------------------------------------------------------------------
# Okabe and Ito's colour-blind-safe qualitative palette, less its yellow (invisible on white),
# then three darker extras for labels with many values.
LABEL_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#E69F00", "#000000",
                 "#882255", "#44AA99", "#999933"]
SEQUENTIAL_CMAP = "viridis"  # shares from 0 to 1 (perceptually even, colour-blind safe)
# Ratios diverge around 1 on a log2 scale: under-use blue, over-use red (ColorBrewer RdBu).
UNDER, EVEN, OVER = "#2166AC", "#F7F7F7", "#B2182B"
RATIO_LIMIT = 8  # ratios beyond 1/8 and 8 are drawn at the end of the scale
OBSERVED_VS_CHANCE = {"observed": "solid", "chance": "dashed"}
GUIDE_GREY = "#636363"
COLOUR_BAR_LENGTH = 200  # points: the length of a horizontal colour bar with seven labels


def use_site_format() -> None:
    """Make plotnine draw figures as the site shows them: PNGs at :data:`SITE_DPI`, one pixel
    per CSS pixel. Without it plotnine assumes "retina" under Quarto (it cannot tell ``png``
    from ``retina``), halves Quarto's dpi and the page shows the PNG at half its width."""
    set_option("figure_format", "png")
    set_option("dpi", SITE_DPI)
    set_option("figure_size", (COLUMN_WIDTH, DEFAULT_HEIGHT))


def theme_moe(base_size: float = BASE_SIZE) -> theme:
    """Return the project theme: ``theme_bw`` with light facet strips, the legend below, and
    the site's size and dpi (a figure as wide as the text column)."""
    return theme_bw(base_size=base_size) + theme(
        strip_background=element_rect(fill="#f0f0f0", colour="#bdbdbd"),
        strip_text=element_text(size=base_size * 0.9),
        panel_grid_minor=element_blank(),
        legend_position="bottom",
        legend_box="vertical",  # legends stacked, not side by side past the figure's edges
        figure_size=(COLUMN_WIDTH, DEFAULT_HEIGHT),
        dpi=SITE_DPI,
    )


def size(height: float = DEFAULT_HEIGHT, wide: bool = False) -> theme:
    """Return the theme override for a figure ``height`` inches tall, as wide as the text
    column or, with ``wide``, as the column and the right margin (give its cell
    ``#| column: page-right``)."""
    return theme(figure_size=(PAGE_WIDTH if wide else COLUMN_WIDTH, height))


def figure_width_px(wide: bool = False) -> int:
    """Return the width in pixels of a column (or wide) figure on the page and in its PNG."""
    return round((PAGE_WIDTH if wide else COLUMN_WIDTH) * SITE_DPI)


def sampled_colours(cmap: str, n: int, stop: float = 0.85) -> list[str]:
    """Return ``n`` colours spread along a matplotlib colormap up to ``stop`` (viridis's light
    yellow end is left out: lines in it vanish on white)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    colours = colormaps[cmap]
    return [to_hex(colours(v)) for v in np.linspace(0, stop, max(n, 1))]


def scale_colour_label(name: str | None = None):
    """Return the colour scale for labels (domains, meanings, measures): colour-blind safe."""
    return scale_colour_manual(values=LABEL_COLOURS, name=name)


def log2_ratio(values, limit: float = RATIO_LIMIT) -> np.ndarray:
    """Return log2 of ratios clipped to [1/limit, limit] (a zero ratio, an unused expert,
    sits at the low end instead of at minus infinity)."""
    return np.log2(np.clip(np.asarray(values, dtype=float), 1 / limit, limit))


def ratio_labels(limit: float = RATIO_LIMIT) -> tuple[list[int], list[str]]:
    """Return the breaks (log2) and labels of a ratio scale: "≤1/8", "1/4", ..., "1", ..., "≥8"."""
    top = int(np.log2(limit))
    breaks = list(range(-top, top + 1))
    fractions = {2: "\u00bd", 4: "\u00bc", 8: "\u215b"}  # ½ ¼ ⅛: short enough for a colour bar
    labels = [fractions.get(2 ** -b, f"1/{2 ** -b}") if b < 0 else f"{2 ** b}" for b in breaks]
    labels[0], labels[-1] = "≤" + labels[0], "≥" + labels[-1]
    return breaks, labels


def scale_fill_ratio(name: str, limit: float = RATIO_LIMIT):
    """Return a diverging fill scale for ``log2_ratio`` values: blue below 1, white at 1, red above."""
    breaks, labels = ratio_labels(limit)
    # a long bar, so that seven labels fit under it (the guide's own theme: the plot's
    # theme, added after the scale, would override a setting made here)
    long_bar = guide_colorbar(theme=theme(legend_key_width=COLOUR_BAR_LENGTH))
    return scale_fill_gradient2(low=UNDER, mid=EVEN, high=OVER, midpoint=0, limits=(breaks[0], breaks[-1]),
                                breaks=breaks, labels=labels, name=name, guide=long_bar)


def as_layer_factor(values) -> pd.Categorical:
    """Return layer indices as an ordered categorical, so layers keep numeric order."""
    values = np.asarray(values)
    order = np.unique(values)
    return pd.Categorical(values.astype(str), categories=order.astype(str), ordered=True)


def scale_colour_layer(n_layers: int):
    """Return the fixed colour scale for layers (apply to ``as_layer_factor`` values): viridis
    from dark to green, never its light yellow end."""
    return scale_colour_manual(values=sampled_colours(SEQUENTIAL_CMAP, n_layers), name="MoE layer")


def expert_breaks(n_experts: int, n_labels: int = 4) -> list[int]:
    """Return about ``n_labels`` expert indices to label on an axis (0, 4, 8, 12 of 16): a
    label per expert runs together in a panel a quarter of the page wide."""
    step = max(1, int(np.ceil(n_experts / n_labels)))
    return list(range(0, n_experts, step))


def scale_x_expert(n_experts: int):
    """Return an x scale with expert indices in order, labelled at a readable spacing."""
    return scale_x_continuous(breaks=expert_breaks(n_experts), expand=(0, 0.5))


def by_model_and_layer() -> facet_grid:
    """Return panels with a row per model and a column per layer, the columns headed
    "layer: 0" (a bare "0" above a panel does not say what it counts)."""
    return facet_grid("model ~ layer", labeller=labeller(cols=label_both))


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
        + scale_linetype_manual(values=OBSERVED_VS_CHANCE, name="Line")
        + scale_x_layer(long["layer"])
        + labs(x=x_title, y=y_title)
        + theme_moe()
    )
    if colour:
        figure += scale_colour_label(colour.replace("_", " ").capitalize())
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
    """Return each expert's load over the uniform share 1/E per layer, from ``expert_load``,
    on a log2 scale around 1 (the dashed line): an expert at half its share sits as far
    below the line as one at twice its share sits above; a dead expert at the bottom."""
    n_experts = int(load["expert"].max()) + 1
    data = load.assign(log2_ratio=log2_ratio(load["share"] / load["uniform_share"]),
                       side=lambda t: np.where(t["log2_ratio"] < 0, "under", "over"))
    breaks, labels = ratio_labels()
    return (
        ggplot(data, aes(x="expert", y="log2_ratio", colour="side"))
        + geom_hline(yintercept=0, linetype="dashed", colour=GUIDE_GREY)
        + geom_segment(aes(xend="expert", yend=0))
        + geom_point(size=1.2)
        + facet_wrap("layer", labeller="label_both")
        + scale_x_expert(n_experts)
        + scale_y_continuous(breaks=breaks, labels=labels, limits=(breaks[0], breaks[-1]))
        + scale_colour_manual(values={"under": UNDER, "over": OVER}, guide=None)
        + labs(x="Expert (index)", y="Load over the uniform share (log2)")
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
        + labs(x="MoE layer (index)", y=f"Router entropy (bits)\n{source}")
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
        + scale_colour_layer(long["layer"].nunique())
        + scale_y_continuous(limits=(0, 1))
        + labs(x=x_title, y="Saturation (share of the final choice)")
        + theme_moe()
    )


def tokens_label(n_tokens: float) -> str:
    """Return a count of training tokens as the axis shows it: "41k", "1.2M"."""
    n = float(n_tokens)
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e3:.3g}k" if n >= 1e3 else f"{n:.0f}"


def shown_token(text: str) -> str:
    """Return a token for a figure's title: in curly quotes, its spaces shown as ␣."""
    return "\u201c" + str(text).replace(" ", "\u2423").replace("\n", "\\n") + "\u201d"


def token_experts_through_training(distribution: pd.DataFrame, layer: int) -> ggplot:
    """Return a heatmap of one token's expert distribution at every checkpoint: experts up,
    checkpoints across (training tokens), the share of the token's occurrences whose top-1
    expert it is as the fill, the values over 0.2 printed. Facet it by model.

    Input: ``token_expert_distribution`` rows of one token id (any number of models).
    """
    data = distribution[distribution["layer"] == layer].copy()
    if data["token_id"].nunique() != 1:
        raise ValueError(f"token_experts_through_training draws one token; got token ids "
                         f"{sorted(data['token_id'].unique())}")
    order = sorted(data["checkpoint"].unique())
    data["tokens"] = pd.Categorical(data["checkpoint"].map(tokens_label), categories=[tokens_label(c) for c in order],
                                    ordered=True)
    data["text"] = np.where(data["share"] >= 0.2, data["share"].map(lambda v: f"{v:.1f}"), "")
    data["text_colour"] = np.where(data["share"] > 0.6, "black", "white")
    n_experts = int(data["expert"].max()) + 1
    return (
        ggplot(data, aes(x="tokens", y="expert", fill="share"))
        + geom_tile()
        + geom_text(aes(label="text", colour="text_colour"), size=7)
        + scale_colour_identity()
        + scale_fill_cmap(SEQUENTIAL_CMAP, limits=(0, 1), name="Share of the token's occurrences")
        + scale_y_continuous(breaks=expert_breaks(n_experts, 8), expand=(0, 0))
        + scale_x_discrete(expand=(0, 0))
        + labs(x="Training tokens (checkpoint)", y="Top-1 expert (index)",
               title=f"Token {shown_token(data['token_str'].iloc[0])}, MoE layer {layer}")
        + theme_moe()
        + theme(axis_text_x=element_text(rotation=45, ha="right"), panel_grid=element_blank())
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
        + scale_colour_manual(values=LABEL_COLOURS, guide=None)  # the panels name the meanings
        + scale_y_continuous(breaks=expert_breaks(n_experts, 8))
        + labs(x="MoE layer (index)", y="Top-1 expert (index)", size="Share of occurrences")
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
        "seen_over_reachable": "Paths seen over paths reachable",
        "accuracy": "Meaning guessed right (share)",
    }
    # one format for every tile: 2 decimals for shares, whole numbers for counts
    shown = "{:.0f}" if value.startswith("n_") else "{:.2f}"
    data = windows.assign(text=windows[value].map(shown.format),
                          text_colour=text_colour_on(windows[value]))
    return (
        ggplot(data, aes(x="first_layer", y="length", fill=value))
        + geom_tile()
        + geom_text(aes(label="text", colour="text_colour"), size=8)
        + scale_colour_identity()
        + scale_fill_cmap(SEQUENTIAL_CMAP, name=titles.get(value, value))
        # both axes count layers: breaks at the tiles, never the default half-integers
        + scale_x_layer(data["first_layer"])
        + scale_y_continuous(breaks=sorted({int(v) for v in data["length"]}))
        + labs(x="First layer of the window (index)", y="Window length (MoE layers)")
        + theme_moe()
    )


def text_colour_on(values) -> np.ndarray:
    """Return "black" or "white" for text printed on viridis tiles of ``values`` (scaled over
    their own range, as the fill is): black on the light upper part, white on the dark."""
    values = np.asarray(values, dtype=float)
    low, high = np.nanmin(values), np.nanmax(values)
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.where(scaled > 0.55, "black", "white")


def route_map_plot(table: pd.DataFrame, colour: str = "domain") -> ggplot:
    """Return the UMAP map of routes, one panel per model, points coloured by ``colour``;
    the axes carry no units, so they are left blank."""
    return (
        ggplot(table, aes(x="x", y="y", colour=colour))
        + geom_point(size=0.6, alpha=0.5, stroke=0)
        + facet_wrap("~model", scales="free")
        + scale_colour_label(colour.capitalize())
        + guides(colour=guide_legend(override_aes={"size": 3, "alpha": 1}))  # legible keys
        + labs(x="UMAP 1", y="UMAP 2")
        + theme_moe()
        + theme(axis_text=element_blank(), axis_ticks=element_blank(), panel_grid=element_blank())
    )


def domain_share_heatmap(share: pd.DataFrame, layer: int, label: str = "domain") -> ggplot:
    """Return a heatmap of each expert's share of a label value's tokens over the uniform
    share k/E (1 = no preference), for one layer, from ``domain_expert_share``: log2 scale,
    white at 1, blue for under-use, red for over-use."""
    data = share[share["layer"] == layer]
    data = data.assign(log2_ratio=log2_ratio(data["ratio"]))
    n_experts = int(data["expert"].max()) + 1
    return (
        ggplot(data, aes(x="expert", y=label, fill="log2_ratio"))
        + geom_tile()
        + scale_fill_ratio("Share over uniform k/E")
        + scale_x_expert(n_experts)
        + labs(x="Expert (index)", y=label.capitalize(), title=f"Layer {layer}")
        + theme_moe()
    )


def tv_distance_plot(table: pd.DataFrame, label: str = "domain", null: str = "tv_shuffled") -> ggplot:
    """Return each label value's TV distance from the pooled routing per layer, with a null
    dashed: ``tv_shuffled`` (labels shuffled over all tokens, from ``domain_tv_distance``) or
    ``tv_within`` (shuffled within each token id, from ``domain_tv_within_token``: what the
    tokens a label uses give by themselves)."""
    long = observed_and_chance(table, {"TV distance": ("tv_distance", null)})
    return observed_vs_chance_plot(long, "TV distance from pooled (0-1)", colour=label)


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
    return observed_vs_chance_plot(long, "Share on the id's top expert")


def coactivation_heatmap(table: pd.DataFrame, layer: int, value: str = "p_j_given_i") -> ggplot:
    """Return a heatmap of co-activation P(E_j | E_i) (or ``lift``) for one layer, from
    ``coactivation``; the diagonal is empty."""
    data = table[table["layer"] == layer]
    n_experts = int(max(data["expert_i"].max(), data["expert_j"].max())) + 1
    if value == "lift":  # a ratio: log2, diverging at 1
        data = data.assign(fill=log2_ratio(data["lift"]))
        fill = scale_fill_ratio("Lift over independence")
    else:
        data = data.assign(fill=data[value])
        fill = scale_fill_cmap(SEQUENTIAL_CMAP, name={"p_j_given_i": "P(expert j | expert i)"}.get(value, value))
    return (
        ggplot(data, aes(x="expert_j", y="expert_i", fill="fill"))
        + geom_tile()
        + fill
        + scale_x_expert(n_experts)
        + scale_y_continuous(breaks=expert_breaks(n_experts), expand=(0, 0.5))
        + coord_fixed()
        + labs(x="Expert j (index)", y="Expert i (index)", title=f"Layer {layer}")
        + theme_moe()
    )
