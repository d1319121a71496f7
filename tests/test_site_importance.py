"""The chapter "Which experts matter": every table of a project model computed once, cached by
the model's identity, and read back without weights (issue 13)."""

from pathlib import Path

import pandas as pd
import pytest

from moe_lib.site import importance as site_importance
from moe_lib.site import probes as site_probes


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty cache and models folder, and a corpus made of the probe's documents."""
    monkeypatch.setenv("MOE_LIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MOE_LIB_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("MOE_LIB_CORPUS", str(site_probes.tiny_corpus(tmp_path / "corpus")))
    return tmp_path


def test_split_halves_alternates_within_each_domain():
    labels = {"domain": ["a", "a", "b", "a", "b"], "id": [0, 1, 2, 3, 4]}
    (scoring_texts, scoring), (evaluation_texts, evaluation) = site_importance.split_halves(list("vwxyz"), labels)
    assert scoring["id"] == [0, 2, 3] and evaluation["id"] == [1, 4]
    assert scoring_texts == ["v", "x", "y"] and evaluation_texts == ["w", "z"]


@pytest.mark.slow
def test_importance_tables_of_a_tiny_model_are_cached_and_read_back(workspace, monkeypatch):
    from moe_lib.interventions import importance

    tables = site_importance.importance_tables("standard-tiny", n_docs=1)
    n_layers, n_experts = 2, 4  # the standard recipe's tiny preset
    scores = tables["scores"]
    assert len(scores) == n_layers * n_experts * 2 and set(scores["model"]) == {"standard-tiny"}
    assert scores.groupby(["layer", "renormalize"])["frequency"].sum().round(6).eq(1).all()
    agreement = tables["agreement"]
    assert set(agreement["criterion"]) == {"frequency", "weight", "reap"} and len(agreement) == n_layers * 3 * 2
    curves = tables["curves"]
    assert set(curves["curve"]) == {"", "frequency", "weight", "reap", "causal", "random"}
    assert sorted(curves.loc[curves["curve"] == "causal", "n_removed"].unique()) == [1, 2]
    assert (curves.loc[curves["study"] == "baseline", "delta"] == 0).all()
    assert curves.loc[curves["curve"] == "random", "draw"].nunique() == site_importance.N_DRAWS
    band = tables["random_band"]
    assert (band["n_draws"] == site_importance.N_DRAWS).all() and (band["delta_lo"] <= band["delta_hi"]).all()
    keep = tables["keep"]
    domains = set(keep["kept_for"])
    assert len(domains) == 6 and keep["same_domain"].sum() == len(domains)
    assert sorted(tables["top_k"]["top_k"].unique()) == [1, 2]

    # cached: no second computation, and the same tables come back without weights
    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached table")

    monkeypatch.setattr(importance, "measure", fail)
    monkeypatch.setattr(site_importance.pruning_curves, "run_studies", fail)
    again = site_importance.importance_tables("standard-tiny", n_docs=1)
    read_back = site_importance.cached_importance_tables(["standard-tiny"])
    for name, table in tables.items():
        assert len(again[name]) == len(table) == len(read_back[name]), name
    assert site_importance.cached_importance_tables(["other-model"]) == {}


# -- the chapter's summaries: pure functions of the cached tables --------------------------
def _curves(model="m"):
    """Curve rows of one model: baseline, two criteria and three random draws at n = 1, 2."""
    rows = [{"study": "baseline", "curve": "", "n_removed": 0, "draw": -1, "domain": d, "n_items": 4, "delta": 0.0,
             "delta_lo": 0.0, "delta_hi": 0.0} for d in ("all", "a", "b")]
    for n in (1, 2):
        for domain in ("all", "a", "b"):
            rows += [{"study": "curve", "curve": "frequency", "n_removed": n, "draw": -1, "domain": domain,
                      "delta": 0.1 * n, "delta_lo": 0.05 * n, "delta_hi": 0.15 * n},
                     {"study": "curve", "curve": "reap", "n_removed": n, "draw": -1, "domain": domain,
                      "delta": 0.5 * n, "delta_lo": 0.4 * n, "delta_hi": 0.6 * n}]
            rows += [{"study": "curve", "curve": "random", "n_removed": n, "draw": draw, "domain": domain,
                      "delta": 0.3 * n + 0.01 * draw, "delta_lo": 0.0, "delta_hi": 1.0} for draw in range(3)]
    return pd.DataFrame(rows).assign(model=model)


def _keep(model="m"):
    """Keep-only rows: two domains, each kept for itself and for the other, n removed 2."""
    rows = [{"kept_for": kept, "domain": measured, "n_removed": 2, "delta": 0.1 if kept == measured else 0.4,
             "delta_lo": 0.0, "delta_hi": 0.5} for kept in ("a", "b") for measured in ("a", "b", "all")]
    keep = pd.DataFrame(rows).assign(study="keep", model=model)
    return keep.assign(same_domain=keep["kept_for"] == keep["domain"])


def _scores(model="m"):
    """Causal and observational scores of 2 layers x 3 experts, both removals."""
    rows = []
    for layer in (0, 1):
        for expert, increase in enumerate((0.02, -0.01, 0.05)):
            for renormalize in (False, True):
                rows.append({"layer": layer, "expert": expert, "renormalize": renormalize,
                             "loss_increase": increase + (0.1 if renormalize else 0), "loss_increase_lo": increase - 0.02,
                             "loss_increase_hi": increase + 0.02, "frequency": (1, 2, 3)[expert] / 6, "reap": 1.0,
                             "model": model})
    return pd.DataFrame(rows)


def _experts(model="m"):
    """The explorer's rows for the experts of :func:`_scores`: tokens and domain mix as JSON."""
    import json

    return pd.DataFrame([{"model": model, "layer": layer, "expert": expert,
                          "top_tokens": json.dumps([[f" t{expert}{i}", 10 - i, 0.5] for i in range(6)]),
                          "domains": json.dumps([["a", 0.2, 0.5], ["b", 0.8, 0.5]])}
                         for layer in (0, 1) for expert in range(3)])


def _agreement(model="m"):
    rows = [{"layer": layer, "criterion": criterion, "renormalize": renormalize, "rho": rho, "lo": rho - 0.3,
             "hi": rho + 0.3} for layer, rho in ((0, 0.5), (1, -0.5)) for criterion in ("frequency", "weight", "reap")
            for renormalize in (False, True)]
    return pd.DataFrame(rows).assign(model=model)


def _tables(model="m"):
    from moe_lib.interventions import pruning_curves

    curves = _curves(model)
    top = pd.DataFrame([{"study": "baseline", "top_k": 2, "domain": "all", "delta": 0.0, "delta_lo": 0.0,
                         "delta_hi": 0.0},
                        {"study": "top_k", "top_k": 1, "domain": "all", "delta": 0.3, "delta_lo": 0.2, "delta_hi": 0.4},
                        {"study": "top_k", "top_k": 1, "domain": "a", "delta": 0.1, "delta_lo": 0.0,
                         "delta_hi": 0.2}]).assign(model=model)
    return {"scores": _scores(model), "agreement": _agreement(model), "curves": curves,
            "random_band": pruning_curves.random_band(curves).assign(model=model), "keep": _keep(model),
            "top_k": top, "experts": _experts(model)}


def test_agreement_wide_has_one_row_per_layer_and_removal_with_a_column_per_criterion():
    wide = site_importance.agreement_wide(_agreement())
    assert len(wide) == 4 and set(wide["removal"]) == {"dropped", "renormalised"}
    assert {f"{v}_{c}" for v in ("rho", "lo", "hi") for c in ("frequency", "weight", "reap")} <= set(wide.columns)
    assert wide.loc[wide["layer"] == 1, "rho_reap"].eq(-0.5).all()
    summary = site_importance.agreement_summary(_agreement())
    dropped = summary[~summary["renormalize"]]
    assert dropped["median_rho"].eq(0).all() and dropped["n_above"].eq(1).all() and dropped["n_below"].eq(1).all()


def test_criteria_are_set_against_the_random_draws_at_the_same_n():
    tables = _tables()
    versus = site_importance.criterion_vs_random(tables["curves"], tables["random_band"])
    assert len(versus) == 4 and set(versus["criterion"]) == {"frequency", "reap"}
    # random draws at n lie in [0.3 n, 0.3 n + 0.02]: frequency (0.1 n) under, REAP (0.5 n) over
    assert versus.loc[versus["criterion"] == "frequency", "below"].all()
    assert versus.loc[versus["criterion"] == "reap", "above"].all()
    summary = site_importance.pruning_summary(versus).iloc[0]
    assert summary["best"] == "frequency" and summary["n_removed"] == 2 and summary["best_delta"] == 0.2
    assert (summary["n_below"], summary["n_above"], summary["n_points"]) == (2, 2, 4)


def test_keep_summary_sets_a_domains_own_experts_beside_anothers_and_random_ones():
    tables = _tables()
    keep = site_importance.keep_summary(tables["keep"], tables["random_band"])
    assert set(keep["domain"]) == {"a", "b"} and len(keep) == 6
    row = keep.set_index(["domain", "kept"])["delta"]
    assert row[("a", "own domain's")] == 0.1 and row[("a", "another domain's")] == 0.4
    assert row[("a", "random")] == pytest.approx(0.61)  # the draws at n = 2: 0.60, 0.61, 0.62


def test_extreme_experts_are_the_causal_scores_ends_of_each_layer_with_tokens_and_domains():
    extremes = site_importance.extreme_experts(_scores(), _experts())
    assert len(extremes) == 4  # 2 layers x (most, least)
    layer = extremes[extremes["layer"] == 0].set_index("which")
    assert layer.loc["most important", "expert"] == 2 and layer.loc["least important", "expert"] == 1
    assert layer.loc["most important", "loss_increase"] == 0.05  # the dropped slot, not renormalised
    assert layer.loc["most important", "tokens"] == (" t20", " t21", " t22", " t23")
    assert layer.loc["most important", "top_domains"] == "b 80 % (50 %); a 20 % (50 %)"


def test_chapter_numbers_give_one_row_per_model_in_the_chapters_order():
    tables = {name: pd.concat([t1, t2], ignore_index=True)
              for (name, t1), t2 in zip(_tables("x").items(), _tables("a").values())}
    tables["scores"]["model"] = pd.Categorical(tables["scores"]["model"], categories=["x", "a"], ordered=True)
    numbers = site_importance.chapter_numbers(tables)
    assert list(numbers.index) == ["x", "a"]
    row = numbers.loc["x"]
    assert (row["n_layers"], row["n_experts"], row["n_scored"], row["n_docs"], row["top_k"]) == (2, 3, 6, 4, 2)
    assert row["best"] == "frequency" and row["rho_reap"] == 0 and row["rho_width"] == pytest.approx(0.6)
    assert row["topk_delta"] == 0.3 and row["keep_own"] == 0.1 and row["n_keep_better"] == 2
    assert row["max_increase"] == 0.05 and row["n_harmless"] == 4  # per layer, intervals from -0.03 and 0.00
    assert str(site_importance.words_per_model(numbers["best"])) == "frequency in both models"
    assert str(site_importance.words_per_model(pd.Series({"x": "REAP", "a": "causal"}))) == "REAP in x and causal in a"


def test_the_chapter_shows_hub_models_scored_but_not_other_seeds_nor_tiny_presets():
    cached = {"standard-default", "standard-default-seed1", "cross-layer-default-seed2", "standard-tiny",
              "olmoe-1b-7b", "cross-layer-default"}
    assert site_importance.other_models_shown(["standard-default"], cached) == ["cross-layer-default", "olmoe-1b-7b"]


def test_the_chapters_figures_are_drawn_from_the_summaries():
    from plotnine import facet_wrap

    from moe_lib.site import importance_plots

    tables = _tables()
    versus = site_importance.criterion_vs_random(tables["curves"], tables["random_band"])
    figures = {
        "curves": importance_plots.pruning_curves_plot(versus),
        "scores": importance_plots.scores_plot(tables["scores"]),
        "keep": importance_plots.keep_plot(site_importance.keep_summary(tables["keep"], tables["random_band"])),
        "top_k": importance_plots.top_k_plot(tables["top_k"]),
    }
    for figure in figures.values():
        (figure + facet_wrap("model")).draw()
    assert list(figures["curves"].data["criterion"].cat.categories) == ["frequency", "mean weight", "REAP", "causal"]
    assert set(figures["top_k"].data["study"]) == {"top_k"}  # the baseline is the line at 0, not a point
    assert figures["scores"].data["renormalize"].eq(False).all()


def test_build_lists_both_importance_stores_a_chapter_read(workspace):
    import xarray as xr

    from moe_lib import site
    from moe_lib.commands.build import site_stores
    from moe_lib.core.cache import cached_dataset, cached_table

    identity = {"model": "m", "weights_sha256": "0" * 16}
    scores = cached_dataset(site_importance.SCORES_STORE, identity,
                            lambda: xr.Dataset({"frequency": ("expert", [0.5, 0.5])}, attrs={"model": "m"}))
    cached_table(site_importance.STUDIES_STORE, identity, lambda: pd.DataFrame({"delta": [0.0]}))
    site.record_read({"cache_name": site_importance.STUDIES_STORE, "cache_key": scores.attrs["cache_key"],
                      "model": "m"}, kind="importance")
    listed = {Path(p).name.rsplit("-", 1)[0] for p in site_stores([])}
    assert {site_importance.SCORES_STORE, site_importance.STUDIES_STORE} <= listed


def test_card_importance_ranks_each_layer_by_the_loss_without_renormalising():
    scores = pd.DataFrame({
        "model": ["m"] * 6, "layer": [1] * 6, "expert": [0, 0, 1, 1, 2, 2],
        "renormalize": [False, True] * 3,
        "loss_increase": [0.02, 9.0, 0.05, 0.0, -0.001, 9.0],
        "loss_increase_lo": [0.01, 0, 0.04, 0, -0.002, 0], "loss_increase_hi": [0.03, 0, 0.06, 0, 0.0, 0],
        "reap": [1.5, 1.5, 2.0, 2.0, 0.5, 0.5]})
    cards = site_importance.card_importance(scores).set_index("expert")
    assert cards["rank in its layer"].tolist() == ["2 of 3", "1 of 3", "3 of 3"]
    assert cards.loc[1, "loss when removed (nats/token)"] == "+0.0500 [0.0400, 0.0600]"
    assert cards.loc[2, "loss when removed (nats/token)"] == "−0.0010 [−0.0020, 0.0000]"
