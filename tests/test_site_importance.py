"""The chapter "Which experts matter": every table of a project model computed once, cached by
the model's identity, and read back without weights (issue 13)."""

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
