"""Our models against n-gram models on the same held-out text, per domain (issue 12, item 14).

A model's routing says something about language only once the model beats a bigram. The
bigram and unigram are fitted on the run's own training tokens and scored on exactly the
validation blocks the run's loss is measured on (:mod:`moe_lib.training.run_report`), so
the three numbers of a row are comparable. Cached by the run's weights, so a fresh clone
without the run folder reads the committed table.
"""

from __future__ import annotations

import pandas as pd

NGRAMS = {"unigram": "unigram", "bigram_interpolated": "bigram", "bigram_absolute_discounting": "bigram"}


def matched_baselines(model: str) -> pd.DataFrame:
    """Return one row per domain (and ``"all"``): model (the run), loss (its final
    held-out loss, nats per token), unigram, bigram (the better of the two bigram models),
    n_tokens and model_minus_bigram (negative: the model wins)."""
    from moe_lib import site
    from moe_lib.core import cache
    from moe_lib.training import run_report

    identity = {"model": model, "weights_sha256": site.weights_sha256(model), "schedule": site.schedule(model),
                "file": "ngram-baselines", "code": site.analysis_version(run_report.baselines_on_eval_text)}
    run = site.models_dir() / model

    def compute() -> pd.DataFrame:
        if not (run / "run.json").is_file():
            raise site.MissingDataError(f"model {model!r}: no cached n-gram baselines and no run folder {run}; "
                                        "run `python -m moe_lib build --from-scratch`")
        site.check_run(model, run)
        baselines = run_report.baselines_on_eval_text(run, site.corpus_dir(), site.PROJECT_ROOT / "datasets" / "tokenizer")
        return baselines

    baselines = cache.cached_table("ngram-baselines", identity, compute)
    site.record_read({"cache_name": "ngram-baselines", "cache_key": cache.cache_key(identity), "model": model},
                     kind="table")
    best = (baselines.assign(kind=baselines["model"].map(NGRAMS))
            .groupby(["domain", "kind"]).nats_per_token.min().unstack("kind"))
    metrics = site.training_metrics(model)
    final = metrics[metrics["step"] == metrics["step"].max()].set_index("domain")
    table = best.join(final[["val_loss", "n_tokens"]], how="inner").reset_index()
    table = table.rename(columns={"val_loss": "loss"}).assign(model=model)
    table["model_minus_bigram"] = table["loss"] - table["bigram"]
    order = sorted(d for d in table["domain"] if d != "all") + ["all"]
    table["domain"] = pd.Categorical(table["domain"], categories=order, ordered=True)
    return table.sort_values("domain")[["model", "domain", "loss", "bigram", "unigram", "model_minus_bigram",
                                        "n_tokens"]].reset_index(drop=True)


def in_words(table: pd.DataFrame) -> str:
    """Return where each model of :func:`matched_baselines` rows beats the bigram, e.g.
    "standard-default in every domain; cross-layer-default in 4 of 6 domains, not on
    religious (4.61 against 4.60) and technical (5.26 against 5.23)"."""
    from moe_lib.site import prose

    domains = table[table["domain"] != "all"]
    parts = []
    for model in domains["model"].unique():
        part = domains[domains["model"] == model]
        lost = part[part["model_minus_bigram"] >= 0]
        if lost.empty or len(lost) == len(part):
            parts.append(f"{model} in {'every domain' if lost.empty else 'no domain'}")
            continue
        losses = [f"{domain} ({prose.number(loss, 2)} against {prose.number(bigram, 2)})"
                  for domain, loss, bigram in lost[["domain", "loss", "bigram"]].itertuples(index=False)]
        parts.append(f"{model} in {len(part) - len(lost)} of {len(part)} domains, not on {prose.join(losses)}")
    return "; ".join(parts)
