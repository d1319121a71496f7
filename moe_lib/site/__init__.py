"""What the site's chapters call: model lists, probe traces and analysis tables, all cached.

A chapter cell stays one line because everything it needs is here::

    from moe_lib import site
    site.models(models)                      # the chapter's params, plus other cached models
    site.trace("standard-default")           # the final checkpoint's trace of the domains probe
    site.checkpoints("standard-default")     # {training tokens: trace} for every checkpoint
    site.table("load", ds, distribution.load_balance)   # an analysis, cached by its inputs
    site.provenance()                        # the cache keys and versions used so far

Stores are found by identity, never by name alone. A model's identity is the sha256 of its
weights for a local checkpoint (:func:`moe_lib.models.checkpoints.weights_sha256`), and its
hub id and revision for a hub model. For the project's own runs the weights' hashes come
from the run folder when it is on disk, and otherwise from the run's committed record
(``datasets/runs/<model>.json``, :mod:`moe_lib.training.run_record`): a fresh clone
without weights finds the committed stores, and a retrained run whose weights differ gets
traces and tables of its own, never the committed ones. A missing store is made: hub
models are loaded (``MOE_LIB_DEVICE`` picks the device) and traced; the project's own
models are traced from saved checkpoints, the ``*-tiny`` test presets trained first if
need be; otherwise the error says to run ``python -m moe_lib build --from-scratch``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd
import xarray as xr

from moe_lib import __version__
from moe_lib.core import cache
from moe_lib.core.schema import SCHEMA_VERSION
from moe_lib.core.trace_store import open_trace
from moe_lib.models.registry import PROJECT_ROOT, REGISTRY
from moe_lib.site.probes import contextual_probe, domain_probe, in_document_probe, in_other_document_probe
from moe_lib.training.probe_traces import MAX_LENGTH, WITH_PREDICTIONS, checkpoint_request, describe_checkpoint
from moe_lib.training.run_record import checkpoint_of, committed_record

PROJECT_MODELS = ["standard-default", "cross-layer-default"]
PROBES = ("domains", "contextual", "in-document", "in-other-document")
# Bump when a table's meaning changes without its function's source changing (e.g. a
# change in a helper module it calls): every cached table is then recomputed.
TABLES_VERSION = 1

_used: dict[str, dict] = {}  # cache key -> provenance row, for provenance()


class MissingDataError(RuntimeError):
    """A trace the site needs that is neither cached nor computable here."""


def device() -> str:
    """Return the torch device for tracing hub models: $MOE_LIB_DEVICE, else "cpu"."""
    return os.environ.get("MOE_LIB_DEVICE", "cpu")


def models_dir() -> Path:
    """Return where the project's runs live: $MOE_LIB_MODELS, else datasets/saved-models/."""
    return Path(os.environ.get("MOE_LIB_MODELS") or PROJECT_ROOT / "datasets" / "saved-models")


def corpus_dir() -> Path:
    """Return the corpus folder used to train a tiny model: $MOE_LIB_CORPUS, else datasets/corpus/."""
    return Path(os.environ.get("MOE_LIB_CORPUS") or PROJECT_ROOT / "datasets" / "corpus")


def own_run(model: str):
    """Return ``(recipe name, preset name, seed, recipe)`` of a project model name, or None.

    ``"cross-layer-default"`` is the ``cross-layer`` recipe's ``default`` preset, seed 0;
    ``"standard-default-seed2"`` the ``standard`` recipe's, seed 2.
    """
    from moe_lib.training.train import RECIPES, recipe_for

    base, _, seed = model.rpartition("-seed")
    if base and seed.isdigit() and int(seed) > 0:
        model, seed = base, int(seed)
    else:
        seed = 0
    for recipe_name in RECIPES:
        preset = model[len(recipe_name) + 1:] if model.startswith(recipe_name + "-") else None
        if preset and preset in RECIPES[recipe_name].PRESETS:
            return recipe_name, preset, seed, recipe_for(recipe_name, preset)
    return None


def own_recipe(model: str):
    """Return ``(recipe name, preset name, recipe)`` of a project model name, or None."""
    found = own_run(model)
    return None if found is None else (found[0], found[1], found[3])


def schedule(model: str) -> list[tuple[int, int]]:
    """Return the ``(step, tokens_seen)`` of every checkpoint a project model's run saves."""
    from moe_lib.training.train import checkpoint_steps

    recipe_name, preset, recipe = _require_own(model)
    tokens_per_step = recipe.batch_size * recipe.seq_len
    return [(step, step * tokens_per_step) for step in checkpoint_steps(recipe.n_steps, recipe.n_checkpoints)]


def _require_own(model: str):
    found = own_recipe(model)
    if found is None:
        raise ValueError(f"model {model!r}: not one of the project's own recipes (standard-*, cross-layer-*)")
    return found


def _probe(probe: str):
    """Return ``(texts, labels, collect kwargs, probe fingerprint)`` of a probe."""
    if probe == "domains":
        texts, labels, fp = domain_probe()
        return texts, labels, {}, fp
    if probe == "contextual":
        texts, labels, spans, fp = contextual_probe()
        return texts, labels, {"target_spans": spans}, fp
    if probe == "in-document":
        texts, labels, spans, fp = in_document_probe()
        return texts, labels, {"target_spans": spans}, fp
    if probe == "in-other-document":
        texts, labels, spans, fp = in_other_document_probe()
        return texts, labels, {"target_spans": spans}, fp
    raise ValueError(f"probe {probe!r}: choose from {PROBES}")


def _own_request(model: str, probe: str, step: int, tokens_seen: int):
    """Return ``(store name, identity, collect kwargs, texts, labels)`` of a checkpoint's
    probe trace, built by :func:`~moe_lib.training.probe_traces.checkpoint_request` as
    training builds it."""
    texts, labels, extra, probe_fp = _probe(probe)
    checkpoint = checkpoint_info(model, step)
    name, identity, collect = checkpoint_request(checkpoint, probe, probe_fp, **extra)
    return name, identity, collect, texts, labels


_described: dict = {}  # checkpoint folder -> (manifest mtime, description): verified once


def checkpoint_info(model: str, step: int, train: bool = True) -> dict:
    """Return what identifies checkpoint ``step`` of a project model: model, recipe, preset,
    seed, recipe hash, step, tokens seen and the sha256 of its weights.

    From the run folder when it is on disk (the user's own run, trained or retrained here;
    a ``*-tiny`` preset is trained first if missing and ``train``), else from the run's
    committed record.
    """
    run = models_dir() / model
    on_disk = (run / "run.json").is_file() or (run / "checkpoints").is_dir()
    record = None if on_disk else committed_record(model)
    if not on_disk and record is None and train and (own_run(model) or (None, None))[1] == "tiny":
        train_tiny(model)
        on_disk = True
    if on_disk:
        path = checkpoint_dir(model, step)
        if not path.is_dir():
            raise MissingDataError(f"model {model!r}: {run} has no checkpoint at step {step} (is its training "
                                   "finished?); run `python -m moe_lib build --from-scratch` to finish it")
        manifest = path / "manifest.json"
        stamp = manifest.stat().st_mtime_ns if manifest.exists() else None
        if _described.get(path, (None,))[0] != stamp or stamp is None:
            check_run(model, path)
            _described[path] = (stamp, describe_checkpoint(path))
        return _described[path][1]
    found = checkpoint_of(record, step) if record else None
    if found is None:
        raise MissingDataError(
            f"model {model!r}: no run folder at {run} and no committed record of step {step} in "
            f"datasets/runs/{model}.json; run `python -m moe_lib build --from-scratch` to train it")
    return found


def weights_sha256(model: str, train: bool = True) -> str:
    """Return the sha256 of a project model's final weights (run folder, else committed
    record; a missing ``*-tiny`` run is trained first if ``train``)."""
    final = max(step for step, _ in schedule(model))
    return checkpoint_info(model, final, train=train)["weights_sha256"]


def _hub_request(model: str, probe: str):
    """Return the same for a registry hub model (or a hub id), identified by id and revision."""
    spec = REGISTRY.get(model)
    source, revision = (spec.source, spec.revision) if spec else (model, None)
    texts, labels, extra, probe_fp = _probe(probe)
    base = {"model": model, "source": source, "revision": revision or "main", "probe": probe_fp}
    attrs = {"model": model, "dataset": f"probe-{probe}"}
    collect = {**extra, "max_length": MAX_LENGTH, "router_logits": True,
               "predictions": probe in WITH_PREDICTIONS, "attrs": attrs}
    safe = model.replace("/", "--")
    return f"probe-{probe}-{safe}", base, collect, texts, labels


def _open_if_cached(name: str, identity: dict, collect: dict, texts, labels) -> xr.Dataset | None:
    """Return the store of a request if the cache holds it under the request's key, else None."""
    expanded = cache.trace_identity(identity, texts, labels, collect)
    path, key = cache.store_path(name, expanded), cache.cache_key(expanded)
    attrs = cache._read_attrs(path) if path.exists() else None
    if attrs is None or attrs.get("cache_key") != key:
        return None
    # The key is a hash: also compare the identity the store says it was made from.
    if json.loads(attrs.get("cache_identity", "null")) != json.loads(cache._canonical(expanded)):
        return None
    ds = open_trace(path)
    record_read(ds.attrs, kind="trace")
    return ds


def record_read(attrs: dict, kind: str, **extra) -> None:
    """Note that the page read the store of ``attrs`` (its cache_name, cache_key, model, ...):
    :func:`provenance` lists these, and ``build --stores-file`` commits them."""
    row = {
        "kind": kind,
        "store": attrs.get("cache_name", ""),
        "cache_key": attrs.get("cache_key", ""),
        "model": attrs.get("model", extra.get("model", "")),
        "step": attrs.get("step", ""),
        "schema_version": attrs.get("schema_version", SCHEMA_VERSION),
        "moe_lib": attrs.get("moe_lib_version", __version__),
        "transformers": attrs.get("transformers_version", ""),
        **extra,
    }
    _used[row["cache_key"]] = row


def _request(model: str, probe: str, step: int | str):
    """Return ``(request, step)``: what identifies a model's probe trace, and the checkpoint step."""
    if own_recipe(model) is None:
        if step != "final":
            raise ValueError(f"model {model!r}: only project models have checkpoints; step={step!r}")
        return _hub_request(model, probe), None
    steps = dict(schedule(model))
    step = max(steps) if step == "final" else int(step)
    if step not in steps:
        raise ValueError(f"model {model!r}: no checkpoint at step {step}; its steps are {sorted(steps)}")
    return _own_request(model, probe, step, steps[step]), step


def trace_key(model: str, probe: str = "domains", step: int | str = "final") -> str:
    """Return the cache key of a model's probe trace, computed without the store or the model."""
    (name, identity, collect, texts, labels), step = _request(model, probe, step)
    key = cache.cache_key(cache.trace_identity(identity, texts, labels, collect))
    record_read({"cache_name": name, "cache_key": key, "model": model, "step": "" if step is None else step},
                kind="trace")
    return key


def trace(model: str, probe: str = "domains", step: int | str = "final") -> xr.Dataset:
    """Return a model's trace of a probe (lazy, from the cache; made first if missing).

    Parameters
    ----------
    model : a project model (``standard-default``), a registry name or a hub id.
    probe : ``"domains"`` (held-out documents of every corpus domain), ``"contextual"``
        (the polysemantic-token samples, with ``is_target`` and ``meaning``) or
        ``"in-document"`` (the same samples after their documents' preceding text).
    step : a checkpoint's optimizer step, or ``"final"``; project models only.
    """
    request, step = _request(model, probe, step)
    found = _open_if_cached(*request)
    if found is not None:
        return found
    return _trace_hub(model, *request) if step is None else _trace_own(model, step, *request)


def checkpoints(model: str, probe: str = "domains") -> dict[int, xr.Dataset]:
    """Return ``{training tokens seen: trace}`` over a project model's checkpoints, in order."""
    return {tokens: trace(model, probe, step) for step, tokens in schedule(model)}


def _trace_hub(model: str, name, identity, collect, texts, labels) -> xr.Dataset:
    from moe_lib.models.registry import load

    loaded, tokenizer = load(model, device=device())
    ds = cache.cached_trace(name, identity, loaded, tokenizer, texts, labels=labels, progress=True, **collect)
    record_read(ds.attrs, kind="trace")
    return ds


def checkpoint_dir(model: str, step: int) -> Path:
    """Return the folder where a project model's run keeps its checkpoint of optimizer step
    ``step`` (under :func:`models_dir`), whether or not it exists."""
    from moe_lib.models.checkpoints import step_dir

    return step_dir(models_dir() / model / "checkpoints", step)


def _trace_own(model: str, step: int, name, identity, collect, texts, labels) -> xr.Dataset:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import moe_lib.models.cross_layer  # noqa: F401  registers moe_crosslayer with AutoModel
    from moe_lib.models.checkpoints import load_model

    path = checkpoint_dir(model, step)
    if not path.is_dir():
        raise MissingDataError(
            f"model {model!r}: no cached trace of probe {collect['attrs']['dataset']!r} at step {step} "
            f"(weights {identity['weights_sha256']}), and no checkpoint at {path} to trace. Run "
            "`python -m moe_lib build --from-scratch` to train the project's models and trace their probes."
        )
    loaded = load_model(path, AutoModelForCausalLM).eval()
    tokenizer = AutoTokenizer.from_pretrained(PROJECT_ROOT / "datasets" / "tokenizer")
    ds = cache.cached_trace(name, identity, loaded, tokenizer, texts, labels=labels, progress=False, **collect)
    record_read(ds.attrs, kind="trace")
    return ds


def check_run(model: str, path: Path) -> None:
    """Return None if the checkpoint or run folder ``path`` of project model ``model`` was
    trained with the code's recipe; raise :class:`MissingDataError` otherwise.

    A run of an older recipe (another hash) must not be traced under the new recipe's
    identity: its traces would be served as the new model's.
    """
    import json

    from moe_lib.models.checkpoints import verify

    _, _, seed, recipe = own_run(model) or _require_own(model)
    state = verify(path) if (path / "manifest.json").exists() else json.loads((path / "run.json").read_text())
    if state.get("seed", 0) != seed:
        raise MissingDataError(f"{path}: trained with seed {state.get('seed', 0)}, but {model!r} names seed {seed}; "
                               "use the run folder of that seed")
    if state["recipe_hash"] != recipe.hash():
        raise MissingDataError(
            f"{path}: trained with recipe hash {state['recipe_hash']}, but the code's {model} recipe is "
            f"{recipe.hash()}; move the old run away and run `python -m moe_lib build` to retrain"
        )


def train_tiny(model: str) -> Path:
    """Train a ``*-tiny`` test preset (seconds to a minute) and return its run directory."""
    from moe_lib.training.train import train

    recipe_name, preset, seed, _ = own_run(model) or _require_own(model)
    if preset != "tiny":
        raise ValueError(f"model {model!r}: only tiny presets are trained on the fly; run `python -m moe_lib build`")
    return train(recipe_name, preset, out_dir=models_dir() / model, seed=seed, corpus_dir=corpus_dir(),
                 tokenizer_dir=PROJECT_ROOT / "datasets" / "tokenizer", progress=False)


def cached_models() -> list[str]:
    """Return the models other than the project's own runs with a domains-probe trace in the
    cache: hub models and saved folders a researcher traced. The project's runs (the
    defaults, other seeds, the recipe controls, the tiny test presets) are shown only where
    a chapter asks for them."""
    stores = cache.list_stores()
    names = stores.loc[stores["dataset"] == "probe-domains", "model"]
    return sorted({m for m in names if m and own_recipe(m) is None})


def models(requested=None) -> list[str]:
    """Return the chapter's models: ``requested`` (default the project's own), then every
    other model whose traces are in the cache.

    ``requested`` may be a list or one name (Quarto's ``-P models:x`` passes a string).
    """
    requested = PROJECT_MODELS if requested is None else requested
    requested = [requested] if isinstance(requested, str) else list(requested)
    return requested + [m for m in cached_models() if m not in requested]


def _code_modules(module) -> list:
    """Return ``module`` and the moe_lib modules it uses, transitively: every one its globals
    reach, and every analysis module it imports anywhere, function bodies included (a table
    function that imports an analysis module lazily depends on it all the same; lazy imports
    of the modules that only fetch data, like ``site`` or ``train``, are not followed)."""
    found, todo = {}, [module]
    while todo:
        current = todo.pop()
        if current is None or current.__name__ in found:
            continue
        found[current.__name__] = current
        for value in vars(current).values():
            owner = value if inspect.ismodule(value) else inspect.getmodule(value)
            if owner is not None and owner.__name__.startswith("moe_lib.") and owner.__name__ not in found:
                todo.append(owner)
        todo += [importlib.import_module(name) for name in _imported_modules(current) if name not in found]
    return [found[name] for name in sorted(found)]


def _imported_modules(module) -> list[str]:
    """Return the names of the ``moe_lib.analysis`` modules that ``module``'s source imports,
    at any depth."""
    names = []
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names if alias.name.startswith("moe_lib.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "moe_lib":
            if node.module != "moe_lib":
                names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names  # `from moe_lib.analysis import paths`
                      if _is_module(f"{node.module}.{alias.name}")]
    return [name for name in names if name.startswith("moe_lib.analysis.")]


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a name inside a module, not a submodule
        return False


def analysis_version(fn: Callable) -> str:
    """Return a table's code version: a hash of TABLES_VERSION, ``fn``'s name and the source of
    its module and of every moe_lib module that module uses (e.g. the analysis modules a
    ``site_tables`` function calls), so a change in any of them makes new tables."""
    module = inspect.getmodule(fn)
    sources = [inspect.getsource(m) for m in _code_modules(module)] if module else [inspect.getsource(fn)]
    text = "\0".join([f"{TABLES_VERSION}:{fn.__module__}.{fn.__qualname__}", *sources])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _keys(traces):
    if isinstance(traces, xr.Dataset):
        return traces.attrs["cache_key"]
    if isinstance(traces, Mapping):
        return [[str(k), _keys(v)] for k, v in traces.items()]
    return [_keys(t) for t in traces]


def table(name: str, traces, fn: Callable[..., pd.DataFrame], **params) -> pd.DataFrame:
    """Return ``fn(traces, **params)`` from the cache, computing and storing it if missing.

    Parameters
    ----------
    name : the store's name, e.g. ``"weight-by-slot"``.
    traces : a trace, or a list or mapping of traces (as ``fn`` takes them); each must be a
        cached store (``trace`` and ``checkpoints`` return those).
    fn : a pure function of the traces, returning a tidy DataFrame.
    params : JSON-native keyword arguments of ``fn``; part of the key.

    The key holds the traces' cache keys, ``params``, ``fn``'s name and
    :func:`analysis_version`, so a change of data, parameters or code makes a new table.
    """
    first = traces if isinstance(traces, xr.Dataset) else next(iter(
        traces.values() if isinstance(traces, Mapping) else traces))
    return _table(name, _keys(traces), lambda: traces, fn, params, first.attrs.get("model", ""))


def _table(name: str, trace_keys, load: Callable, fn: Callable, params: dict, model: str) -> pd.DataFrame:
    """Return the cached table of ``fn`` over the traces keyed ``trace_keys``; ``load()``
    gives the traces, called only when the table must be computed."""
    version = analysis_version(fn)
    identity = {"table": name, "traces": trace_keys, "fn": f"{fn.__module__}.{fn.__qualname__}",
                "params": params, "analysis_version": version}
    result = cache.cached_table(name, identity, lambda: fn(load(), **params))
    record_read({"cache_name": name, "cache_key": cache.cache_key(identity), "model": model},
            kind="table", analysis_version=version)
    return result


def per_model(name: str, model_list, fn: Callable[..., pd.DataFrame], probe: str = "domains",
              over_checkpoints: bool = False, **params) -> pd.DataFrame:
    """Return ``table(name, traces, fn, **params)`` for every model, stacked, with a
    ``model`` column (ordered as ``model_list``) for faceting.

    ``traces`` is the model's final trace of ``probe``, or with ``over_checkpoints`` the
    mapping :func:`checkpoints` returns (project models only). The traces' keys are
    computed, not read, so a cached table is served without opening (or having) its
    traces; they are opened, or made, only when the table must be computed.
    """
    parts = []
    for model in model_list:
        if over_checkpoints:
            keys = [[str(tokens), trace_key(model, probe, step)] for step, tokens in schedule(model)]
            load = functools.partial(checkpoints, model, probe)
        else:
            keys, load = trace_key(model, probe), functools.partial(trace, model, probe)
        parts.append(_table(name, keys, load, fn, params, model).assign(model=model))
    out = pd.concat(parts, ignore_index=True)
    out["model"] = pd.Categorical(out["model"], categories=list(dict.fromkeys(model_list)), ordered=True)
    return out


def with_checkpoints(model_list) -> list[str]:
    """Return the models of ``model_list`` that have training checkpoints (the project's own)."""
    return [m for m in model_list if own_recipe(m) is not None]


def training_metrics(model: str) -> pd.DataFrame:
    """Return a project model's validation loss per domain at each checkpoint (cached).

    The run's ``metrics.csv`` is read once into the cache, keyed by the final weights' sha256
    and the checkpoint schedule, so the committed cache keeps it when the run folder is gone.
    Columns as ``metrics.csv``: step, tokens_seen, domain, val_loss (nats per token),
    n_tokens, train_loss, elapsed_s.
    """
    identity = {"model": model, "weights_sha256": weights_sha256(model), "schedule": schedule(model),
                "file": "metrics.csv"}
    path = models_dir() / model / "metrics.csv"

    def read() -> pd.DataFrame:
        if path.is_file():
            check_run(model, path.parent)
        if not path.is_file():
            raise MissingDataError(f"model {model!r}: no cached training metrics and no {path}; "
                                   "run `python -m moe_lib build`")
        metrics = pd.read_csv(path)
        if sorted(metrics["step"].unique()) != [s for s, _ in schedule(model)]:
            raise MissingDataError(f"{path}: steps {sorted(metrics['step'].unique())} are not the full "
                                   f"schedule {[s for s, _ in schedule(model)]}; finish training first")
        return metrics

    result = cache.cached_table("training-metrics", identity, read)
    record_read({"cache_name": "training-metrics", "cache_key": cache.cache_key(identity), "model": model}, kind="table")
    return result


def provenance() -> pd.DataFrame:
    """Return one row per cache store read in this session: kind, store, key, model,
    checkpoint step, schema, moe_lib and transformers versions (of the traces), and a
    table's analysis version."""
    columns = ["kind", "store", "cache_key", "model", "step", "schema_version", "moe_lib", "transformers",
               "analysis_version"]
    rows = pd.DataFrame(list(_used.values()))
    return rows.reindex(columns=columns).fillna("").sort_values(["kind", "store"]).reset_index(drop=True)


__all__ = [
    "PROJECT_MODELS", "MissingDataError", "analysis_version", "cached_models", "check_run", "checkpoint_dir",
    "checkpoint_info", "checkpoints", "models", "own_run", "weights_sha256",
    "own_recipe", "per_model", "provenance", "record_read", "schedule", "table", "trace", "trace_key", "train_tiny",
    "training_metrics", "with_checkpoints",
]
