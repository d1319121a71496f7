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
    assert load.mapping["y"] == "share" and load.facet.vars == ["layer"]
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
    polar = plots.expert_polar_plot(dist, layer=1)
    # Segment length is the share: the radius sqrt(x^2 + y^2) gives it back.
    np.testing.assert_allclose(np.hypot(polar.data["x"], polar.data["y"]), polar.data["share"])
    assert polar.facet.vars == ["checkpoint"]
    drawn(polar)
    with pytest.raises(ValueError, match="one token"):
        plots.expert_polar_plot(saturation.token_expert_distribution(checkpoints, [3, 4]), layer=1)


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
    assert set(share.data["layer"]) == {2} and share.mapping["fill"] == "ratio"
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
