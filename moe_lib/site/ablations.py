"""The ablations chapter's data: the expert-ablation grid and the logit lens of every model
whose results are cached, run first for the project's own models when missing.

The tables are those of ``python -m moe_lib ablate`` (:mod:`moe_lib.commands.ablate`), built
by :mod:`moe_lib.interventions.ablation_runs` into the same stores under the same keys: a hub
model's run on a GPU and a project model's run here land side by side, and
:func:`ablation_tables` reads them all. A project model whose final
checkpoint is on disk is looked up by the key its weights give (so a retrained model is
run afresh, never served an old table); without its checkpoint (a fresh clone), the
committed tables of that name are read back.

The summaries turn per-item rows into what the chapter plots: values with bootstrap
intervals, each targeted condition beside its random control.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from plotnine import (
    aes,
    element_text,
    geom_line,
    geom_point,
    geom_segment,
    geom_text,
    geom_tile,
    geom_vline,
    ggplot,
    labs,
    position_nudge,
    scale_colour_identity,
    scale_colour_manual,
    scale_fill_gradient2,
    scale_x_continuous,
    theme,
)

from moe_lib.interventions import ablation, ablation_runs
from moe_lib.interventions.lens import summarize_lens
from moe_lib.plots import EVEN, OVER, UNDER, theme_moe

BENCHMARKS = ablation_runs.BENCHMARKS
# Zero-shot MMLU prompts: five solved questions overflow our models' 256 positions.
N_SHOTS = 0


def run_settings(benchmark: str, **options) -> ablation_runs.RunSettings:
    """Return the settings of the chapter's run: those of ``python -m moe_lib ablate`` with
    zero-shot MMLU and the site's corpus, and ``options`` on top."""
    import dataclasses

    from moe_lib import site

    unknown = set(options) - {f.name for f in dataclasses.fields(ablation_runs.RunSettings)}
    if unknown:
        raise ValueError(f"option(s) {sorted(unknown)}: not settings of an ablation run "
                         "(see moe_lib.interventions.ablation_runs.RunSettings)")
    options = {"n_shots": N_SHOTS, "corpus": site.corpus_dir() / "validation.jsonl", **options}
    return ablation_runs.RunSettings(benchmark, **options)


def final_checkpoint(model: str):
    """Return the final checkpoint folder of a project model (a tiny one is trained if
    missing), or None where it is not on disk."""
    from moe_lib import site

    step = max(step for step, _ in site.schedule(model))
    path = site.checkpoint_dir(model, step)
    if not path.is_dir() and model.endswith("-tiny"):
        site.train_tiny(model)
    if not path.is_dir():
        return None
    site.check_run(model, path)
    return path


def run_own(model: str, benchmark: str, **options) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Return ``(grid rows, lens rows)`` of a project model from the cache, running the
    ``ablate`` command's grid and lens on its final checkpoint if missing; None without one.

    Keys are those of the command (:func:`~moe_lib.interventions.ablation_runs.run_identity`):
    the model's name, the sha256 of its weights, the benchmark, the sample's fingerprint,
    its length limit, the seed and the grid.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import moe_lib.models.cross_layer  # noqa: F401  registers moe_crosslayer with AutoModel
    from moe_lib.models.checkpoints import load_model
    from moe_lib.models.registry import PROJECT_ROOT

    path = final_checkpoint(model)
    if path is None:
        return None
    loaded = load_model(path, AutoModelForCausalLM).eval()
    tokenizer = AutoTokenizer.from_pretrained(PROJECT_ROOT / "datasets" / "tokenizer")
    run = run_settings(benchmark, **options)
    texts, labels = _sample(run)
    return ablation_runs.cached_tables(
        loaded, tokenizer, texts, labels, name=model, benchmark=benchmark, max_length=run.max_length_for(loaded),
        grid=run.grid, batch_size=run.batch_size, seed=run.seed,
    )


def _sample(run: ablation_runs.RunSettings) -> tuple[list[str], dict]:
    from moe_lib import site

    try:
        return ablation_runs.sample(run)
    except FileNotFoundError as error:
        if run.benchmark == "heldout":
            raise
        raise site.MissingDataError(f"{error} (MMLU for the ablations chapter)") from error


def latest_cached(name: str, weights: dict[str, str] | None = None) -> pd.DataFrame:
    """Return :func:`~moe_lib.interventions.ablation.cached_results` keeping, per model, one
    store: for a model of ``weights`` (model -> sha256 of its weights), one made from those
    weights (others are dropped: a retrained model never shows another's run); for any
    other model, the store written last."""
    from moe_lib.core.cache import list_stores

    results = ablation.cached_results(name)
    if results.empty:
        return results
    stores = list_stores()
    written = {key: (Path(path).stat().st_mtime, key) for key, path in zip(stores["key"], stores["path"])}
    made_from = {key: store_weights(path) for key, path in zip(stores["key"], stores["path"])}
    runs = results[["model", "cache_key"]].drop_duplicates()
    expected = runs["model"].map(weights or {})
    runs = runs[expected.isna() | (runs["cache_key"].map(made_from) == expected)]
    # ties (a fresh clone's files share one time) go to the larger key: one run per model
    newest = runs.groupby("model")["cache_key"].agg(lambda keys: max(keys, key=written.__getitem__))
    return results[results["cache_key"].isin(set(newest))].reset_index(drop=True)


def store_weights(path) -> str | None:
    """Return the weights sha256 a cached run's identity names, or None."""
    import json

    import zarr

    identity = json.loads(zarr.open_group(path, mode="r").attrs.get("cache_identity", "{}"))
    return identity.get("weights_sha256")


def project_weights(models: list[str]) -> dict[str, str]:
    """Return ``{model: sha256 of its final weights}`` for the project models of ``models``
    (run folder on disk, or committed record); "" where neither exists, which no store matches."""
    from moe_lib import site

    known = {}
    for model in models:
        if site.own_recipe(model) is not None:
            try:
                known[model] = site.weights_sha256(model, train=False)
            except site.MissingDataError:
                known[model] = ""
    return known


def ablation_tables(benchmark: str, models: list[str], **options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(grid rows, lens rows)`` on ``benchmark`` of every model with results.

    The project models of ``models`` are run first where their results are missing
    (:func:`run_own`); then every other model whose results are cached is added (tiny
    test presets only when asked for). Both tables carry a categorical ``model`` column
    ordered as ``models``, then the others by name.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark!r}: choose from {BENCHMARKS}")
    from moe_lib import site

    grids, lenses, ran = [], [], []
    for model in models:
        found = run_own(model, benchmark, **options) if site.own_recipe(model) else None
        if found is not None:
            grids.append(found[0].assign(model=model))
            lenses.append(found[1].assign(model=model))
            ran.append(model)
    weights = project_weights(models)
    grid_store = ablation_runs.grid_store(benchmark, options.get("grid", "default"))
    for frames, name in ((grids, grid_store), (lenses, f"lens-{benchmark}")):
        cached = latest_cached(name, weights)
        if not cached.empty:
            wanted = cached["model"].isin(models) | ~cached["model"].str.endswith("-tiny")
            for model, key in cached.loc[wanted, ["model", "cache_key"]].drop_duplicates().itertuples(index=False):
                site.record_read({"cache_name": name, "cache_key": key, "model": model}, kind="ablation")
            frames.append(cached[wanted & ~cached["model"].isin(ran)].drop(columns="cache_key"))
    grid, lens = (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame() for frames in (grids, lenses))
    order = list(dict.fromkeys([m for m in models if m in set(grid.get("model", []))]
                               + sorted(set(grid.get("model", [])) - set(models))))
    for table in (grid, lens):
        if not table.empty:
            table["model"] = pd.Categorical(table["model"], categories=order, ordered=True)
    return grid, lens


# -- summaries ----------------------------------------------------------------------------
def _cell_label(row) -> str:
    """Return a condition's grid cell without its control flag, e.g. ``"top-1 · last:2 · renorm"``."""
    if row["condition"] == ablation.BASELINE:
        return "baseline"
    slots = {"0": "top-1", "all": "all k"}.get(row["slots"], f"slots {row['slots']}")
    label = " · ".join([slots, row["layers"], *(["renorm"] if row["renormalize"] else [])])
    # every slot but the first removed and the weight given back: top-k reduced to k' = 1
    return label + " (k′ = 1)" if row["slots"] == "1+" and row["renormalize"] else label


def grid_summary(grid: pd.DataFrame, by: tuple[str, ...] = (), seed: int = 0) -> pd.DataFrame:
    """Return per model (and ``by``) and condition the score with its bootstrap interval and
    its paired difference from the baseline.

    Next-token loss (nats per token) for held-out rows, accuracy (with ``chance``) for
    MMLU rows. Adds ``cell`` (the condition without its control flag, in grid order) and
    ``removed`` (``"chosen experts"``, ``"random control"`` or ``"none"``) so that every
    condition sits beside its control.
    """
    is_mmlu = "correct" in grid.columns
    parts = []
    for model, rows in grid.groupby("model", observed=True, sort=True):
        summary = (ablation.summarize_accuracy(rows, by=by, seed=seed) if is_mmlu
                   else ablation.summarize_loss(rows, by=by, seed=seed))
        parts.append(summary.assign(model=model))
    table = pd.concat(parts, ignore_index=True).rename(columns={"accuracy": "value", "loss": "value"})
    table["cell"] = table.apply(_cell_label, axis=1)
    table["cell"] = pd.Categorical(table["cell"], categories=list(dict.fromkeys(table["cell"])), ordered=True)
    table["removed"] = np.where(table["condition"] == ablation.BASELINE, "none",
                                np.where(table["random_control"], "random control", "chosen experts"))
    table["model"] = pd.Categorical(table["model"], categories=grid["model"].cat.categories, ordered=True)
    return table.assign(measure="accuracy" if is_mmlu else "loss")


def grid_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Return the grid as one row per model and cell, the random control beside its condition.

    The baseline row holds the score with its 95 % interval (``value``, ``lo``, ``hi``); every
    other row the chosen experts' score (``value``) and, for the chosen experts and the random
    control, the paired difference from the baseline with its interval (``chosen_delta``,
    ``chosen_lo``, ``chosen_hi``, ``random_delta``, ...; NaN where a cell has no control).
    """
    keys = ["model", "cell"]
    base = summary[summary["removed"] == "none"][keys + ["value", "lo", "hi"]]
    parts = [base]
    chosen = summary[summary["removed"] == "chosen experts"]
    random = summary[summary["removed"] == "random control"]
    rows = chosen[keys + ["value", "delta", "delta_lo", "delta_hi"]].rename(
        columns={"delta": "chosen_delta", "delta_lo": "chosen_lo", "delta_hi": "chosen_hi"})
    rows = rows.merge(random[keys + ["delta", "delta_lo", "delta_hi"]].rename(
        columns={"delta": "random_delta", "delta_lo": "random_lo", "delta_hi": "random_hi"}), on=keys, how="left")
    parts.append(rows)
    table = pd.concat(parts, ignore_index=True)
    order = {cell: i for i, cell in enumerate(summary["cell"].cat.categories)}
    table["model"] = pd.Categorical(table["model"], categories=summary["model"].cat.categories, ordered=True)
    table = table.sort_values(["model", "cell"], key=lambda c: c.map(order) if c.name == "cell" else c, kind="stable")
    return table.assign(cell=table["cell"].astype(str)).reset_index(drop=True)


def grid_table(summary: pd.DataFrame):
    """Return :func:`grid_rows` typeset for the page: per model, the condition, its score
    (the baseline's with its 95 % interval), and the chosen experts' and the random
    control's difference from the baseline as "+0.50 [0.41, 0.60]"."""
    from moe_lib.site.typeset import Column, Interval, table

    is_mmlu = summary["measure"].iloc[0] == "accuracy"
    score, unit = ("Accuracy", "") if is_mmlu else ("Loss", " (nats/token)")
    rows = grid_rows(summary)
    return table(rows, {
        "cell": Column("Condition", kind="text"),
        "value": Interval(f"{score}{unit}", "lo", "hi", decimals=3),
        "chosen_delta": Interval(f"Chosen experts removed: Δ {score.lower()} [95 % CI]", "chosen_lo", "chosen_hi",
                                 decimals=3, sign=True),
        "random_delta": Interval(f"Random control: Δ {score.lower()} [95 % CI]", "random_lo", "random_hi",
                                 decimals=3, sign=True),
    })


def multiple_comparisons(summary: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Return per model how many of its ablated conditions (chosen experts and random
    controls, the baseline excluded) differ from the baseline: ``n_tests``, ``n_raw`` (paired
    bootstrap p below ``alpha``) and ``n_holm`` (below ``alpha`` after Holm's correction
    over the model's conditions; the family-wise error is then at most ``alpha``), and
    ``survivors``, the conditions that survive, in grid order."""
    rows = []
    for model, part in summary[summary["removed"] != "none"].groupby("model", observed=True):
        adjusted = ablation.holm(part["delta_p"].to_numpy())
        kept = part[adjusted < alpha]
        rows.append({"model": model, "n_tests": int(part["delta_p"].notna().sum()),
                     "n_raw": int((part["delta_p"] < alpha).sum()), "n_holm": int((adjusted < alpha).sum()),
                     "survivors": [str(c) for c in kept["condition"]]})
    return pd.DataFrame(rows, columns=["model", "n_tests", "n_raw", "n_holm", "survivors"])


# The "layers" grid's comparisons: (label, condition, reference); None = the baseline.
LAYER_CONTRASTS = (
    ("top-1 removed", "free", None),
    ("random slot removed (control)", "random", None),
    ("weight-matched (control)", "weight", None),
    ("top-1 removed, later routes held", "held", None),
    ("expert beyond its weight", "free", "weight"),
    ("re-routing downstream", "free", "held"),
)


def layer_contributions(grid: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Return per model and MoE layer the loss changes of the ``"layers"`` grid, each with a
    paired bootstrap interval and p-value over documents (:data:`LAYER_CONTRASTS`): each
    condition against the baseline, and two contrasts between conditions: the top-1
    removal minus its weight-matched control (what losing that expert costs beyond losing
    its weight) and minus the same removal with the later layers' routes held (what
    re-routing downstream adds; negative: it repairs). No held row for the last layer.

    Columns: model, layer, contrast, delta, delta_lo, delta_hi, delta_p.
    """
    def flag(name):  # the column is missing, or empty (NaN) in rows of other conditions
        return grid[name].eq(True) if name in grid.columns else pd.Series(False, index=grid.index)

    grid = grid.assign(variant=np.select(
        [grid["condition"] == ablation.BASELINE, flag("random_control"), flag("weight_matched"), flag("hold_later")],
        ["baseline", "random", "weight", "held"], "free"))
    baselines = {model: rows for model, rows in grid[grid["variant"] == "baseline"].groupby("model", observed=True)}
    rows = []
    for (model, layer), part in grid[grid["variant"] != "baseline"].groupby(["model", "layers"], observed=True):
        part = pd.concat([part, baselines[model]])
        for label, variant, reference in LAYER_CONTRASTS:
            pair = [variant, reference or "baseline"]
            both = part[part["variant"].isin(pair)]
            if set(both["variant"]) != set(pair):
                continue  # the last layer has no held condition
            # the reference plays the baseline: bootstrap_summary's paired difference is the contrast
            both = both.assign(condition=np.where(both["variant"] == pair[1], ablation.BASELINE, label))
            summary = ablation.summarize_loss(both.drop(columns="variant"), by=(), seed=seed)
            found = summary[summary["condition"] == label].iloc[0]
            rows.append({"model": model, "layer": int(layer), "contrast": label,
                         **{c: found[c] for c in ("delta", "delta_lo", "delta_hi", "delta_p")}})
    table = pd.DataFrame(rows)
    table["contrast"] = pd.Categorical(table["contrast"], categories=[c[0] for c in LAYER_CONTRASTS], ordered=True)
    if isinstance(grid["model"].dtype, pd.CategoricalDtype):
        table["model"] = pd.Categorical(table["model"], categories=grid["model"].cat.categories, ordered=True)
    return table.sort_values(["model", "layer", "contrast"]).reset_index(drop=True)


def lens_by_layer(lens: pd.DataFrame) -> pd.DataFrame:
    """Return the lens per model, lens condition and layer, pooled over domains or questions:
    ``prob`` (mean probability of the correct token) and ``top1`` (share where it ranks first
    over the vocabulary), as long rows (``measure``, ``value``), with ``condition`` labels."""
    keys = ["model", "condition", "random_control", "layer"]
    if "item" in lens.columns:  # per-question MMLU rows: summarise them here
        pooled = summarize_lens(lens, by=keys[:3])
    else:  # held-out rows are summaries per domain: pool them weighted by their tokens
        weighted = lens[["prob", "top1"]].mul(lens["n"], axis=0).assign(n=lens["n"])
        pooled = weighted.groupby([lens[k] for k in keys], observed=True).sum()
        pooled = pooled[["prob", "top1"]].div(pooled["n"], axis=0).reset_index()
    long = pooled.melt(id_vars=keys, value_vars=["prob", "top1"], var_name="measure", value_name="value")
    names = {"prob": "P(correct token)", "top1": "ranked first"}
    return long.assign(measure=long["measure"].map(names))


# -- figures ------------------------------------------------------------------------------
REMOVED_COLOURS = {"chosen experts": "#d7301f", "random control": "#525252"}
LENS_COLOURS = {"baseline": "#2b8cbe", "top-1 · all": "#d7301f", "top-1 · all · random": "#525252"}


def grid_plot(summary: pd.DataFrame) -> ggplot:
    """Return the grid figure: per cell (rows, grid order from the top), the chosen experts'
    and the random control's difference from the baseline with its paired 95 % interval,
    side by side; 0 (solid) is the baseline, and for MMLU the dashed line is chance. Facet
    it by model (and domain), with free scales where models have different layer counts."""
    rest = summary[summary["removed"] != "none"]
    order = [c for c in summary["cell"].cat.categories[::-1] if c != "baseline"]
    rest = rest.assign(cell=pd.Categorical(rest["cell"].astype(str), categories=order, ordered=True))
    plot = ggplot(rest, aes(y="cell", colour="removed")) + geom_vline(xintercept=0, colour="#2b8cbe")
    for removed, shift in (("chosen experts", 0.17), ("random control", -0.17)):
        part = rest[rest["removed"] == removed]
        plot += geom_segment(part, aes(x="delta_lo", xend="delta_hi", yend="cell"), position=position_nudge(y=shift))
        plot += geom_point(part, aes(x="delta"), size=1.6, position=position_nudge(y=shift))
    is_mmlu = summary["measure"].iloc[0] == "accuracy"
    plot += scale_colour_manual(values=REMOVED_COLOURS, name="removed")
    plot += theme_moe()
    plot += labs(y="", x=f"{'accuracy' if is_mmlu else 'next-token loss (nats/token)'} minus the baseline's")
    if is_mmlu:
        base = summary[summary["removed"] == "none"]
        plot += geom_vline(base.assign(chance=base["chance"] - base["value"]), aes(xintercept="chance"),
                           linetype="dashed")
    return plot


def lens_plot(lens: pd.DataFrame) -> ggplot:
    """Return the lens figure: per layer, each lens measure under the baseline, the top-1
    expert removed in every layer, and its random control. Facet it ``measure ~ model``."""
    table = lens.assign(run=np.where(lens["condition"] == ablation.BASELINE, "baseline",
                            np.where(lens["random_control"], "top-1 · all · random", "top-1 · all")))
    return (ggplot(table, aes("layer", "value", colour="run")) + geom_line() + geom_point(size=1.4)
            + scale_x_continuous(breaks=sorted(table["layer"].unique()))
            + scale_colour_manual(values=LENS_COLOURS, name="")
            + labs(x="after decoder layer", y="") + theme_moe())


def grid_domain_plot(summary: pd.DataFrame) -> ggplot:
    """Return the per-domain grid as tiles: conditions down, corpus domains across, the
    difference from the baseline as the fill (diverging at 0, red where the loss rises)
    with its value printed, chosen experts beside the random control. Facet it
    ``model ~ removed``."""
    rest = summary[summary["removed"] != "none"]
    order = [c for c in summary["cell"].cat.categories[::-1] if c != "baseline"]
    limit = float(np.nanmax(np.abs(rest["delta"]))) or 1.0
    data = rest.assign(cell=pd.Categorical(rest["cell"].astype(str), categories=order, ordered=True),
                       text=rest["delta"].map(lambda v: f"{v:+.2f}".replace("-", "\u2212")),
                       text_colour=np.where(np.abs(rest["delta"]) > 0.6 * limit, "white", "black"))
    return (
        ggplot(data, aes("domain", "cell", fill="delta"))
        + geom_tile(colour="white")
        + geom_text(aes(label="text", colour="text_colour"), size=7)
        + scale_colour_identity()
        + scale_fill_gradient2(low=UNDER, mid=EVEN, high=OVER, midpoint=0, limits=(-limit, limit),
                               name="Loss minus the baseline's (nats/token)")
        + labs(x="Corpus domain", y="")
        + theme_moe()
        + theme(axis_text_x=element_text(rotation=30, ha="right"))
    )


def letter_bias(grid: pd.DataFrame) -> pd.Series:
    """Return per model the share of MMLU questions answered, at baseline, with the letter
    the model picks most often (0.25 if it spread its answers evenly)."""
    base = grid[grid["condition"] == ablation.BASELINE]
    return base.groupby("model", observed=True)["pred"].agg(lambda pred: pred.value_counts(normalize=True).max())
