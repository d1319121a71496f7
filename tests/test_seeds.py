"""site.seeds: headline numbers per training seed and their spread; site.baselines: models
against n-gram models on the same text."""

import numpy as np
import pandas as pd
import pytest

from moe_lib import site
from moe_lib.analysis import distribution
from moe_lib.site import baselines, seeds
from moe_lib.site import importance as site_importance


def test_spread_gives_mean_and_range_over_seeds_in_the_claims_order():
    table = pd.DataFrame({
        "recipe": ["b", "b", "a", "a", "a", "b"],
        "run": ["b", "b-seed1", "a", "a-seed1", "a-seed2", "b"],
        "claim": ["worst-load", "worst-load", "worst-load", "worst-load", "worst-load", "top1-weight"],
        "value": [2.0, 4.0, 1.0, 2.0, 6.0, 0.7],
        "baseline": [1.0, 1.0, 1.0, 1.0, 1.0, 0.5],
    })
    table["recipe"] = pd.Categorical(table["recipe"], categories=["b", "a"], ordered=True)
    out = seeds.spread(table)
    # top1-weight comes before worst-load in CLAIMS; models keep the chapter's order
    assert out[["claim", "recipe"]].astype(str).values.tolist() == [
        ["top1-weight", "b"], ["worst-load", "b"], ["worst-load", "a"]]
    a = out[(out.claim == "worst-load") & (out.recipe == "a")].iloc[0]
    assert (a["mean"], a.lo, a.hi, a.n_seeds, a.baseline_value) == (3.0, 1.0, 6.0, 3, 1.0)
    assert "baseline: 1 (even load)" in a.heading


def test_a_model_that_is_not_a_project_recipe_is_its_only_run():
    assert seeds.seed_runs("olmoe-1b-7b") == ["olmoe-1b-7b"]


def test_baselines_in_words_names_the_domains_a_model_loses():
    table = pd.DataFrame({
        "model": ["m"] * 3 + ["n"] * 3,
        "domain": ["code", "speech", "all"] * 2,
        "loss": [4.0, 5.26, 4.5, 3.0, 3.0, 3.0],
        "bigram": [4.5, 5.23, 4.8, 4.0, 4.0, 4.0],
    })
    table["model_minus_bigram"] = table["loss"] - table["bigram"]
    assert baselines.in_words(table) == (
        "m in 1 of 2 domains, not on speech (5.26 against 5.23); n in every domain")


@pytest.mark.slow
def test_seed_runs_find_every_trained_seed_and_claims_match_the_chapters_tables(tiny_site):
    site.weights_sha256("standard-tiny")
    site.weights_sha256("standard-tiny-seed1")  # trains the tiny preset's seed 1
    assert seeds.seed_runs("standard-tiny") == ["standard-tiny", "standard-tiny-seed1"]

    runs = seeds.per_run(["standard-tiny"], chapter="routing-basics")
    assert set(runs["run"]) == {"standard-tiny", "standard-tiny-seed1"}
    assert set(runs["claim"]) == {c.key for c in seeds.CLAIMS if c.chapter == "routing-basics"}
    # seed 0's number is the chapter's own table, read the chapter's way
    balance = site.per_model("load-balance", ["standard-tiny"], distribution.load_balance)
    worst = runs[(runs.run == "standard-tiny") & (runs.claim == "worst-load")].value.item()
    assert worst == balance.max_over_mean.max()
    # two seeds of a random init route differently, so the range is a real range
    spread = seeds.spread(runs)
    row = spread[spread.claim == "worst-load"].iloc[0]
    assert row.n_seeds == 2 and row.lo < row.hi and row.lo <= row["mean"] <= row.hi

    # the importance chapter's claims: seed 0's are the chapter's numbers, each seed its own
    importance = seeds.per_run(["standard-tiny"], chapter="importance").set_index(["run", "claim"])
    numbers = site_importance.chapter_numbers(site_importance.chapter_tables(["standard-tiny"])).loc["standard-tiny"]
    assert importance.loc[("standard-tiny", "rho-reap"), "value"] == numbers.rho_reap
    assert importance.loc[("standard-tiny", "top-k-one"), "value"] == numbers.topk_delta
    pruned = importance.loc[("standard-tiny", "prune-half-causal")]
    assert pruned.value == numbers.causal_delta and pruned.baseline > 0  # random experts cost something
    assert len(importance.xs("standard-tiny-seed1")) == len([c for c in seeds.CLAIMS if c.chapter == "importance"])


@pytest.mark.slow
def test_matched_baselines_score_the_run_and_the_ngrams_on_the_same_text(tiny_site):
    from moe_lib.training import run_report

    table = baselines.matched_baselines("standard-tiny")
    assert list(table.domain.astype(str))[-1] == "all" and len(table) == 7  # six domains and all
    table = table.assign(domain=table.domain.astype(str))
    direct = run_report.baselines_on_eval_text(site.models_dir() / "standard-tiny", site.corpus_dir(),
                                               site.PROJECT_ROOT / "datasets" / "tokenizer")
    best_bigram = direct[direct.model.str.startswith("bigram")].groupby("domain").nats_per_token.min()
    np.testing.assert_allclose(table.set_index("domain").bigram.sort_index(), best_bigram.sort_index())
    metrics = site.training_metrics("standard-tiny")
    final = metrics[metrics.step == metrics.step.max()].set_index("domain").val_loss
    np.testing.assert_allclose(table.set_index("domain").loss.sort_index(), final.sort_index())
    # the same n_tokens as the run's own evaluation: one text for all three
    assert (table.n_tokens > 0).all()


def test_the_build_trains_the_seeds_the_chapters_show():
    from moe_lib.commands import build

    assert build.SEEDS == seeds.SEEDS
