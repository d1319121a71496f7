"""The ablations chapter's data layer: summaries known by hand, the wide table, the pooled
lens, and which cached runs the chapter shows."""

import dataclasses
import os

import numpy as np
import pandas as pd
import pytest

from moe_lib.core import cache
from moe_lib.interventions import ablation_runs
from moe_lib.interventions.ablation import Condition
from moe_lib.site import ablations as site_ablations

CONDITIONS = [Condition(), Condition("all", "0"), Condition("all", "0", random_control=True),
              Condition("last:2", "all")]


def heldout_rows(nll: dict, n_predicted=(10, 20, 30), model="m") -> pd.DataFrame:
    """Per-item rows as the grid writes them: ``nll`` maps a condition name to per-item sums."""
    rows = []
    for condition in CONDITIONS:
        for item, (value, n) in enumerate(zip(nll[condition.name], n_predicted)):
            rows.append({**condition.columns(), "item": item, "nll_sum": value, "n_predicted": n,
                         "domain": "code" if item < 2 else "speech", "model": model})
    table = pd.DataFrame(rows)
    return table.assign(model=pd.Categorical(table["model"]))


NLL = {"baseline": [20.0, 40.0, 60.0], "slots 0 | layers all": [30.0, 50.0, 70.0],
       "slots 0 | layers all | random": [22.0, 42.0, 62.0], "slots all | layers last:2": [40.0, 80.0, 120.0]}


def test_grid_summary_pools_tokens_and_pairs_each_condition_with_its_control():
    summary = site_ablations.grid_summary(heldout_rows(NLL)).set_index("condition")
    assert summary.loc["baseline", "value"] == pytest.approx(120 / 60)
    assert summary.loc["slots 0 | layers all", "value"] == pytest.approx(150 / 60)
    assert summary.loc["slots 0 | layers all", "delta"] == pytest.approx(30 / 60)
    assert summary.loc["slots 0 | layers all | random", "delta"] == pytest.approx(6 / 60)
    assert summary.loc["slots 0 | layers all", "cell"] == summary.loc["slots 0 | layers all | random", "cell"]
    assert list(summary["removed"]) == ["none", "chosen experts", "random control", "chosen experts"]
    assert summary.loc["slots all | layers last:2", "cell"] == "all k · last:2"
    assert (summary["measure"] == "loss").all()


def test_grid_summary_by_domain_and_for_multiple_choice():
    by_domain = site_ablations.grid_summary(heldout_rows(NLL), by=("domain",)).set_index(["domain", "condition"])
    assert by_domain.loc[("code", "baseline"), "value"] == pytest.approx(60 / 30)
    assert by_domain.loc[("speech", "slots all | layers last:2"), "delta"] == pytest.approx(2.0)
    mmlu = heldout_rows(NLL).drop(columns=["nll_sum", "n_predicted"])
    mmlu["correct"] = (mmlu["condition"] == "baseline") | (mmlu["item"] == 0)
    summary = site_ablations.grid_summary(mmlu).set_index("condition")
    assert summary.loc["baseline", "value"] == 1.0
    assert summary.loc["slots 0 | layers all", "value"] == pytest.approx(1 / 3)
    assert (summary["chance"] == 0.25).all() and (summary["measure"] == "accuracy").all()


def test_layer_contributions_by_hand():
    # Two MoE layers (0, 1): per-item nll sums of each condition of the "layers" grid.
    conditions = {Condition(): [20.0, 40.0]}
    for layer, offset in ((0, 0.0), (1, 4.0)):
        conditions[Condition((layer,), "0")] = [30.0 + offset, 50.0 + offset]
        conditions[Condition((layer,), "0", random_control=True)] = [24.0, 44.0]
        conditions[Condition((layer,), "0", weight_matched=True)] = [26.0, 46.0]
    conditions[Condition((0,), "0", hold_later=True)] = [27.0, 47.0]
    rows = pd.DataFrame([{**c.columns(), "item": i, "nll_sum": v, "n_predicted": 10, "model": "m"}
                         for c, values in conditions.items() for i, v in enumerate(values)])
    table = site_ablations.layer_contributions(rows).set_index(["layer", "contrast"])["delta"]
    assert table[(0, "top-1 removed")] == pytest.approx(20 / 20)
    assert table[(0, "random slot removed (control)")] == pytest.approx(8 / 20)
    assert table[(0, "weight-matched (control)")] == pytest.approx(12 / 20)
    assert table[(0, "top-1 removed, later routes held")] == pytest.approx(14 / 20)
    assert table[(0, "expert beyond its weight")] == pytest.approx((80 - 72) / 20)  # free - weight-matched
    assert table[(0, "re-routing downstream")] == pytest.approx((80 - 74) / 20)  # free - held
    assert table[(1, "top-1 removed")] == pytest.approx(28 / 20)
    assert (1, "re-routing downstream") not in table.index  # the last layer has no later routes to hold
    assert len(table) == 6 + 4


def test_grid_table_puts_the_control_beside_its_condition():
    summary = site_ablations.grid_summary(heldout_rows(NLL))
    rows = site_ablations.grid_rows(summary).set_index("cell")
    assert list(rows.index) == ["baseline", "top-1 · all", "all k · last:2"]  # grid order, no jumps
    assert rows.loc["baseline", "value"] == pytest.approx(2.0)
    assert rows.loc["top-1 · all", "chosen_delta"] == pytest.approx(0.5)
    assert rows.loc["top-1 · all", "random_delta"] == pytest.approx(0.1)
    assert np.isnan(rows.loc["all k · last:2", "random_delta"])  # no control for all k
    shown = site_ablations.grid_table(summary).frame.set_index("Condition")
    assert shown.loc["baseline"].iloc[0].startswith("2.000 [")
    assert shown.loc["top-1 · all"].iloc[1].startswith("+0.500 [")
    assert shown.loc["top-1 · all"].iloc[2].startswith("+0.100 [")
    assert shown.loc["all k · last:2"].iloc[2] == ""  # empty, not NaN


def test_grid_domain_plot_is_one_tile_per_condition_and_domain():
    summary = site_ablations.grid_summary(heldout_rows(NLL), by=("domain",))
    figure = site_ablations.grid_domain_plot(summary)
    assert figure.mapping["fill"] == "delta" and len(figure.data) == 3 * 2  # 3 conditions, 2 domains
    assert "\u2212" in "".join(figure.data["text"]) or (figure.data["delta"] >= 0).all()
    figure.draw()


def test_lens_by_layer_weights_domains_by_their_tokens():
    lens = pd.DataFrame({
        "domain": ["code", "speech"] * 2, "layer": [0, 0, 1, 1], "n": [10, 30, 10, 30],
        "prob": [0.1, 0.5, 0.2, 0.2], "top1": [0.0, 0.4, 1.0, 0.0],
        "condition": "baseline", "random_control": False, "model": "m",
    })
    pooled = site_ablations.lens_by_layer(lens).set_index(["layer", "measure"])["value"]
    assert pooled[(0, "P(correct token)")] == pytest.approx((10 * 0.1 + 30 * 0.5) / 40)
    assert pooled[(1, "ranked first")] == pytest.approx(10 / 40)


def test_lens_by_layer_summarises_per_question_rows():
    lens = pd.DataFrame({"item": [0, 1, 0, 1], "layer": [0, 0, 1, 1], "rank": [0, 5, 0, 0],
                         "prob": [0.5, 0.1, 0.9, 0.7], "logprob": np.log([0.5, 0.1, 0.9, 0.7]),
                         "condition": "baseline", "random_control": False, "model": "m"})
    pooled = site_ablations.lens_by_layer(lens).set_index(["layer", "measure"])["value"]
    assert pooled[(0, "P(correct token)")] == pytest.approx(0.3)
    assert pooled[(0, "ranked first")] == 0.5 and pooled[(1, "ranked first")] == 1.0


def test_the_chapters_run_settings_are_the_commands_with_zero_shots():
    from moe_lib.cli import build_parser
    from moe_lib.commands.ablate import settings

    chapter = site_ablations.run_settings("mmlu", n_questions=50)
    command = settings(build_parser().parse_args(["ablate", "standard-default", "--benchmark", "mmlu",
                                                  "--n-questions", "50"]))
    assert (chapter.n_shots, command.n_shots) == (0, 5)
    assert chapter.corpus.name == command.corpus.name == "validation.jsonl"
    assert dataclasses.replace(chapter, n_shots=5, corpus=command.corpus) == command
    with pytest.raises(ValueError, match="n_question"):
        site_ablations.run_settings("mmlu", n_question=50)


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """A cache, an empty models folder (no checkpoint, as in a fresh clone) and the committed
    run records of standard-default and standard-tiny (final weights "aaaa" and "cccc")."""
    from moe_lib import site
    from moe_lib.training.run_record import write_record

    for name in ("CACHE", "MODELS", "RUNS"):
        monkeypatch.setenv(f"MOE_LIB_{name}", str(tmp_path / name.lower()))
    for model, weights in (("standard-default", "aaaa"), ("standard-tiny", "cccc")):
        final = site.schedule(model)[-1]
        write_record({"model": model, "recipe": "standard", "preset": model.split("-")[1], "seed": 0,
                      "recipe_hash": "x", "checkpoints": [{"step": final[0], "tokens_seen": final[1],
                                                           "weights_sha256": weights}]})
    return tmp_path


def store(model: str, run: int, weights: str | None = None, grid: str = "default") -> None:
    """Cache a grid and a lens of ``model`` (made from ``weights``), written at time ``run`` (seconds)."""
    identity = {"model": model, "run": run, **({"weights_sha256": weights} if weights else {})}
    rows = heldout_rows(NLL, model=model).assign(run=run)
    name = ablation_runs.grid_store("heldout", grid)
    cache.cached_table(name, {**identity, "grid": grid}, lambda: rows.assign(model=model))
    os.utime(cache.store_path(name, {**identity, "grid": grid}), (run, run))
    lens = pd.DataFrame({"domain": "code", "layer": [0], "n": [1], "prob": [0.5], "top1": [1.0],
                         "condition": "baseline", "random_control": False, "model": model, "run": run})
    cache.cached_table("lens-heldout", identity, lambda: lens)


def test_ablation_tables_shows_every_cached_model_once_and_no_tiny_one_unasked(clone, monkeypatch):
    store("standard-default", 1, weights="aaaa")
    store("standard-default", 3, weights="bbbb")  # newer, but other weights than the committed run (#17)
    store("org/hub-moe", 1)
    store("standard-tiny", 1, weights="cccc")
    store("org/hub-moe", 2)  # written last: the run shown
    grid, lens = site_ablations.ablation_tables("heldout", ["standard-default"])
    assert list(grid["model"].cat.categories) == ["standard-default", "org/hub-moe"]
    assert grid.groupby("model", observed=True)["run"].unique().map(list).to_dict() == {
        "standard-default": [1], "org/hub-moe": [2]}
    assert set(lens["model"]) == {"standard-default", "org/hub-moe"}
    # asked for, a tiny model's cached run is shown (here without training it: no checkpoint)
    monkeypatch.setattr(site_ablations, "run_own", lambda model, benchmark, **options: None)
    tiny, _ = site_ablations.ablation_tables("heldout", ["standard-tiny"])
    assert list(tiny["model"].cat.categories) == ["standard-tiny", "org/hub-moe", "standard-default"]


def test_each_grid_is_read_apart(clone, monkeypatch):
    monkeypatch.setattr(site_ablations, "run_own", lambda model, benchmark, **options: None)
    store("standard-default", 1, weights="aaaa")
    store("standard-default", 2, weights="aaaa", grid="layers")  # newer, of the same weights: another grid
    default, _ = site_ablations.ablation_tables("heldout", ["standard-default"])
    layers, _ = site_ablations.ablation_tables("heldout", ["standard-default"], grid="layers")
    assert list(default["run"].unique()) == [1] and list(layers["run"].unique()) == [2]


def test_ablation_tables_refuses_an_unknown_benchmark():
    with pytest.raises(ValueError, match="benchmark 'hellaswag'"):
        site_ablations.ablation_tables("hellaswag", ["standard-default"])


def test_letter_bias_is_the_share_of_the_most_picked_letter_at_baseline():
    grid = pd.DataFrame({"condition": ["baseline"] * 4 + ["slots 0 | layers all"] * 4, "pred": [0, 0, 0, 2] + [1] * 4,
                         "model": pd.Categorical(["m"] * 8)})
    assert site_ablations.letter_bias(grid)["m"] == 0.75
