"""Tests of moe_lib.plots: every builder is built from real analysis output and drawn."""

import copy
import io

import numpy as np
import pandas as pd
import pytest
from helpers_traces import make_trace, random_trace
from plotnine import aes, geom_tile, ggplot

from moe_lib import plots
from moe_lib.analysis import crosslayer, distribution, paths, saturation, specialization


@pytest.fixture(scope="module")
def trace():
    ds = random_trace(3000, n_layers=3, n_experts=8, top_k=2, seed=0, with_logits=True)
    rng = np.random.default_rng(0)
    target = ds["token_id"].values == 3
    meaning = np.where(target, rng.choice(["bank (river)", "bank (money)"], target.size), "").astype(object)
    return ds.assign_coords(is_target=("token", target), meaning=("token", meaning))


def drawn(figure):
    """Return the PNG bytes of ``figure`` saved to memory (this runs every stat and scale)."""
    buffer = io.BytesIO()
    figure.save(buffer, format="png", dpi=40, verbose=False)
    assert buffer.getvalue()[:4] == b"\x89PNG"
    return buffer.getvalue()


def test_theme_is_a_small_override_of_theme_bw():
    theme = plots.theme_moe()
    assert theme.themeables["legend_position"].properties["value"] == "bottom"


def test_weight_by_slot_boxplot_faceted_by_layer(trace):
    figure = plots.weight_by_slot_plot(distribution.weight_by_slot(trace))
    assert figure.facet.vars == ["layer"]
    assert figure.mapping["middle"] == "median" and figure.mapping["ymax"] == "q95"
    drawn(figure)


def test_load_entropy_and_consecutive_figures(trace):
    load = plots.expert_load_plot(distribution.expert_load(trace))
    assert load.mapping["y"] == "log2_ratio" and load.facet.vars == ["layer"]
    entropy = plots.router_entropy_plot(distribution.router_entropy(trace))
    assert "full router distribution" in entropy.labels.y
    consecutive = plots.consecutive_routing_plot(distribution.consecutive_routing(trace))
    assert consecutive.mapping["linetype"] == "kind" and set(consecutive.data["kind"]) == {"observed", "chance"}
    for figure in (load, entropy, consecutive):
        drawn(figure)


def test_saturation_and_polar_figures(trace):
    checkpoints = {1000: trace, 2000: trace}
    figure = plots.saturation_plot(saturation.router_saturation(checkpoints))
    assert figure.mapping["color"] == "layer" and figure.data["layer"].cat.ordered
    drawn(figure)
    dist = saturation.token_expert_distribution(checkpoints, [3])
    heat = plots.token_experts_through_training(dist, layer=1)
    assert heat.mapping["fill"] == "share" and list(heat.data["tokens"].cat.categories) == ["1k", "2k"]
    drawn(heat)
    with pytest.raises(ValueError, match="one token"):
        plots.token_experts_through_training(saturation.token_expert_distribution(checkpoints, [3, 4]), layer=1)


def test_crosslayer_figures(trace):
    flow = plots.meaning_flow_plot(crosslayer.meaning_flow(trace))
    assert flow.facet.vars == ["meaning"] and flow.mapping["xend"] == "next_layer"
    js = plots.specialization_js_plot(crosslayer.specialization_js(trace, n_permutations=5))
    assert set(js.data["measure"]) == {"Context (meaning vs token)", "Token id (token vs all tokens)"}
    continuity = plots.expert_continuity_plot(crosslayer.expert_continuity(trace, n_permutations=3))
    for figure in (flow, js, continuity):
        drawn(figure)


def test_path_and_specialization_heatmaps(trace):
    heat = plots.path_heatmap(paths.path_windows(trace), "coverage_top10")
    assert heat.mapping["fill"] == "coverage_top10" and len(heat.data) == 6
    share = plots.domain_share_heatmap(specialization.domain_expert_share(trace), layer=2)
    assert set(share.data["layer"]) == {2} and share.mapping["fill"] == "log2_ratio"
    tv = plots.tv_distance_plot(specialization.domain_tv_distance(trace, n_permutations=3))
    co = plots.coactivation_heatmap(specialization.coactivation(trace), layer=0, value="lift")
    assert co.mapping["x"] == "expert_j" and len(co.data) == 8 * 7
    for figure in (heat, share, tv, co):
        drawn(figure)


def _built_breaks(figure) -> dict[str, list]:
    """Return the x and y breaks of ``figure``'s panel scales, as drawing computes them."""
    figure = copy.deepcopy(figure)
    figure._build()
    return {
        "x": list(figure.layout.panel_scales_x[0].get_breaks()),
        "y": list(figure.layout.panel_scales_y[0].get_breaks()),
    }


def test_path_heatmap_ticks_are_whole_layers(trace):
    windows = paths.path_windows(trace)
    breaks = _built_breaks(plots.path_heatmap(windows, "coverage_top10"))
    assert breaks["x"] == sorted(set(windows["first_layer"]))
    assert breaks["y"] == sorted(set(windows["length"]))
    # plotnine's own breaks for these axes fall on halves: the test can tell them apart
    default = _built_breaks(ggplot(windows, aes("first_layer", "length")) + geom_tile())
    assert any(b % 1 for b in default["x"] + default["y"] if b is not None)


def test_axis_titles_are_words():
    ds = make_trace(np.array([[0, 1], [1, 0]]), 2)
    figure = plots.expert_load_plot(distribution.expert_load(ds))
    assert figure.labels.x == "Expert (index)"


def test_vocabulary_specialization_summary_is_occurrence_weighted():
    # Layer 0: token 1 (3 occurrences) always on expert 0, token 2 once: weighted mean 1.
    # Layer 1: token 1 on 1, 1, 0 (2/3), token 2 once (1): (3 * 2/3 + 1) / 4 = 3/4.
    ds = make_trace(np.array([[0, 1], [0, 1], [0, 0], [1, 0]]), 2, token_id=[1, 1, 1, 2])
    figure = plots.vocabulary_specialization_plot(specialization.vocabulary_specialization(ds, min_count=1))
    observed = figure.data[figure.data["kind"] == "observed"]["value"]
    assert observed.tolist() == pytest.approx([1.0, 0.75])
    drawn(figure)


def test_route_map_is_one_panel_per_model_coloured_by_the_label():
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"model": np.repeat(["a", "b"], 50), "x": rng.normal(size=100), "y": rng.normal(size=100),
                          "domain": rng.choice(["code", "speech"], 100)})
    figure = plots.route_map_plot(table, "domain")
    assert figure.mapping["color"] == "domain" and figure.facet.vars == ["model"]
    drawn(figure)


def png_width(png: bytes) -> int:
    """Return the width in pixels written in a PNG's header (bytes, or base64 as Jupyter keeps it)."""
    import base64

    data = base64.b64decode(png) if isinstance(png, str) else png
    return int.from_bytes(data[16:20], "big")


def test_figures_are_drawn_at_the_width_the_page_shows_them(trace):
    # issue 14: the PNG's pixels are the page's CSS pixels, so text is drawn at its reading size
    figure = plots.expert_load_plot(distribution.expert_load(trace))
    buffer = io.BytesIO()
    figure.save(buffer, format="png", verbose=False)
    assert png_width(buffer.getvalue()) == plots.figure_width_px() == round(plots.COLUMN_WIDTH * plots.SITE_DPI)
    wide = figure + plots.size(5, wide=True)
    buffer = io.BytesIO()
    wide.save(buffer, format="png", verbose=False)
    assert png_width(buffer.getvalue()) == plots.figure_width_px(wide=True)
    # the smallest text, axis labels at 0.8 of the base size, is at least 9 px on screen
    assert 0.8 * plots.BASE_SIZE * plots.SITE_DPI / 72 >= 9


def test_site_format_makes_jupyter_show_pngs_at_their_own_width(trace):
    from plotnine.options import get_option, set_option

    saved = {name: get_option(name) for name in ("figure_format", "dpi", "figure_size")}
    try:
        plots.use_site_format()
        bundle, metadata = plots.expert_load_plot(distribution.expert_load(trace))._repr_mimebundle_()
        assert png_width(bundle["image/png"]) == metadata["image/png"]["width"] == plots.figure_width_px()
    finally:
        for name, value in saved.items():
            set_option(name, value)


def test_palettes_are_colour_blind_safe_and_never_yellow():
    from matplotlib.colors import to_rgb

    for colour in plots.LABEL_COLOURS + plots.sampled_colours("viridis", 8):
        red, green, blue = to_rgb(colour)
        assert not (red > 0.8 and green > 0.8 and blue < 0.4), f"{colour} is yellow: invisible on white"


def test_ratios_are_log2_around_one_and_clipped():
    np.testing.assert_allclose(plots.log2_ratio([0, 0.5, 1, 2, 100]), [-3, -1, 0, 1, 3])
    breaks, labels = plots.ratio_labels()
    assert labels[breaks.index(0)] == "1" and labels[0] == "\u2264\u215b" and labels[-1] == "\u22658"


def test_expert_axis_labels_do_not_run_together():
    assert plots.expert_breaks(16) == [0, 4, 8, 12]
    assert plots.expert_breaks(4) == [0, 1, 2, 3]
    assert len(plots.expert_breaks(64)) == 4


def test_ratio_heatmaps_diverge_at_one(trace):
    share = plots.domain_share_heatmap(specialization.domain_expert_share(trace), layer=2)
    assert share.mapping["fill"] == "log2_ratio"
    lift = plots.coactivation_heatmap(specialization.coactivation(trace), layer=0, value="lift")
    assert lift.data["fill"].abs().max() <= 3
    drawn(share)
    drawn(lift)
