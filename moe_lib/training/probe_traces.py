"""Routing traces of a training checkpoint on fixed probe sets, through the cache.

Three probes, all fixed for every checkpoint of every run so traces compare across training:

- ``domains``: held-out documents of every corpus domain (``training_data.probe_set``);
- ``contextual``: the polysemantic-token samples of ``datasets/contextual-tokens/``, with
  ``is_target`` marking the target token, when that folder exists;
- ``in-document``: the same samples, each after the text that precedes it in its document
  (``in-document.jsonl`` of that folder; :mod:`moe_lib.data.contextual_documents`).

Each trace is cached by ``moe_lib.core.cache.cached_trace`` under the identity
``{model, weights_sha256, probe}`` (:func:`checkpoint_request`, which the site uses too), so
a checkpoint is traced once, a chapter reads the store without loading the model, and a
retrained checkpoint whose weights differ never reads another's trace.
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from moe_lib.models import checkpoints
from moe_lib.training.training_data import probe_set, read_documents

MAX_LENGTH = 256  # tokens per probe text; documents are cut to this anyway
PROBES = ("domains", "contextual", "in-document")
# The probes whose traces keep each token's predicted next token (next-token
# specialization reads it). The others keep routing only: the model then computes the last
# position's logits alone, and for a small model the LM head is most of the forward.
WITH_PREDICTIONS = ("domains", "contextual")


def model_name(recipe: str, preset: str, seed: int = 0) -> str:
    """Return the name a run's traces carry, e.g. ``"standard-default"`` (seed 0) or
    ``"standard-default-seed1"``."""
    return f"{recipe}-{preset}" + (f"-seed{seed}" if seed else "")


def checkpoint_request(checkpoint: dict, probe: str, probe_fingerprint: str, target_spans=None):
    """Return ``(store name, identity, collect kwargs)`` of a checkpoint's probe trace.

    ``checkpoint`` holds model (the run's name), recipe, preset, seed, recipe_hash, step,
    tokens_seen and weights_sha256, from the checkpoint itself or from the run's committed
    record (:mod:`moe_lib.training.run_record`): both give the same key. The identity is
    the weights and the probe; the run's description goes into the attrs.
    """
    fields = ("model", "recipe", "preset", "seed", "recipe_hash", "step", "tokens_seen", "weights_sha256")
    missing = [f for f in fields if f not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint description lacks {missing}")
    attrs = {**{f: checkpoint[f] for f in fields}, "checkpoint_step": checkpoint["step"],
             "dataset": f"probe-{probe}"}
    identity = {"model": checkpoint["model"], "weights_sha256": checkpoint["weights_sha256"],
                "probe": probe_fingerprint}
    collect = {"max_length": MAX_LENGTH, "router_logits": True, "predictions": probe in WITH_PREDICTIONS,
               "attrs": attrs}
    if target_spans is not None:
        collect["target_spans"] = target_spans
    return f"probe-{probe}-{checkpoint['model']}", identity, collect


def describe_checkpoint(checkpoint_dir: Path) -> dict:
    """Return what :func:`checkpoint_request` needs of a saved checkpoint, after verifying it."""
    state = checkpoints.verify(checkpoint_dir)
    seed = state.get("seed", 0)
    return {"model": model_name(state["recipe"], state["preset"], seed), "recipe": state["recipe"],
            "preset": state["preset"], "seed": seed, "recipe_hash": state["recipe_hash"], "step": state["step"],
            "tokens_seen": state["tokens_seen"], "weights_sha256": checkpoints.weights_sha256(checkpoint_dir)}


def domain_probe(validation_path: Path, n_per_domain: int = 8):
    """Return ``(texts, labels, fingerprint)`` of the held-out domain probe."""
    return probe_set(read_documents(Path(validation_path)), n_per_domain=n_per_domain)


def contextual_probe(directory: Path):
    """Return ``(texts, labels, target_spans, fingerprint)`` of the polysemantic samples, or None.

    None when ``directory`` does not exist (the samples are built by another command).
    """
    from moe_lib.core.cache import fingerprint
    from moe_lib.data.contextual import load_contextual_tokens

    if not Path(directory).is_dir():
        return None
    table = load_contextual_tokens(directory)
    if table.empty:
        return None
    texts = table.text.tolist()
    labels = {
        "target": table.token.tolist(),
        "meaning": table.meaning.tolist(),
        "source": table.source.fillna("").tolist(),
    }
    spans = [[list(span) for span in spans] for spans in table.target_spans]
    return texts, labels, spans, fingerprint(texts, {**labels, "spans": [str(s) for s in spans]})


def in_document_probe(directory: Path):
    """Return ``(texts, labels, target_spans, fingerprint)`` of the polysemantic samples, each
    traced after its document's preceding text, or None when that file or folder is missing.

    Labels are the contextual probe's plus ``context_tokens`` (tokens before the target),
    ``document_start`` (whether the context reaches the document's start) and
    ``opens_sample`` (whether only whitespace precedes the target in its sample: the
    occurrences the isolated probe gave no left context).
    """
    from moe_lib.core.cache import fingerprint
    from moe_lib.data.contextual import find_target_spans
    from moe_lib.data.contextual_documents import FILE_NAME, read_in_document

    if not (Path(directory) / FILE_NAME).is_file():
        return None
    samples = contextual_probe(directory)
    if samples is None:
        return None
    records = read_in_document(directory)
    isolated_texts, isolated_labels, _, _ = samples
    # samples are read in file order, so a sample's index is its rank within its meaning
    by_sample, ranks = {}, {}
    for row, meaning in enumerate(zip(isolated_labels["target"], isolated_labels["meaning"])):
        ranks[meaning] = ranks.get(meaning, -1) + 1
        by_sample[(*meaning, ranks[meaning])] = row
    texts, spans, rows, opens = [], [], [], []
    for record in records:
        row = by_sample.get((record["token"], record["meaning"], record["sample_index"]))
        if row is None or isolated_labels["source"][row] != record["source"]:
            raise ValueError(f"{Path(directory) / 'in-document.jsonl'}: no sample {record['token']!r} / "
                             f"{record['meaning']!r} #{record['sample_index']} from {record['source']!r} in the "
                             "YAML files; rebuild it with "
                             "`python -m moe_lib datasets build-in-document`")
        offset, sample = len(record["preceding"]), isolated_texts[row]
        in_sample = find_target_spans(sample, record["token"])
        texts.append(record["preceding"] + sample)
        spans.append([[start + offset, end + offset] for start, end in in_sample])
        opens.append(not sample[:in_sample[0][0]].strip())
        rows.append(row)
    labels = {name: [values[row] for row in rows] for name, values in isolated_labels.items()}
    labels["context_tokens"] = [record["context_tokens"] for record in records]
    labels["document_start"] = [record["document_start"] for record in records]
    labels["opens_sample"] = opens
    return texts, labels, spans, fingerprint(texts, {**labels, "spans": [str(s) for s in spans]})


def trace_checkpoint(
    checkpoint_dir: Path,
    *,
    validation_path: Path = Path("datasets/corpus/validation.jsonl"),
    contextual_dir: Path = Path("datasets/contextual-tokens"),
    model=None,
    tokenizer=None,
    tokenizer_dir: Path = Path("datasets/tokenizer"),
    probes: tuple[str, ...] = PROBES,
    progress: bool = False,
) -> dict[str, xr.Dataset]:
    """Return the probe traces of a saved checkpoint, from the cache or collected now.

    Parameters
    ----------
    checkpoint_dir
        A ``checkpoints/step-XXXXXX`` directory; verified against its manifest first.
    probes
        Which of ``PROBES`` to trace; ``"contextual"`` and ``"in-document"`` are skipped
        when their files are missing.
    model, tokenizer
        The checkpoint's model and tokenizer if already in memory (the training loop
        passes them); otherwise loaded from ``checkpoint_dir`` and ``tokenizer_dir``.

    Returns
    -------
    dict
        ``{"domains": trace, "contextual": trace, "in-document": trace}`` (the last two
        only when their files exist); traces follow moe_lib.core.schema, with
        ``router_logits``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import moe_lib.models.cross_layer  # noqa: F401  registers moe_crosslayer with AutoModel
    from moe_lib.core.cache import cached_trace

    checkpoint = describe_checkpoint(checkpoint_dir)
    if model is None:
        model = checkpoints.load_model(checkpoint_dir, AutoModelForCausalLM)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    unknown = set(probes) - set(PROBES)
    if unknown:
        raise ValueError(f"unknown probe(s) {sorted(unknown)}; choose from {PROBES}")
    was_training = model.training
    model.eval()
    traces = {}
    if "domains" in probes:
        texts, labels, probe_fp = domain_probe(validation_path)
        name, identity, collect = checkpoint_request(checkpoint, "domains", probe_fp)
        traces["domains"] = cached_trace(name, identity, model, tokenizer, texts, labels=labels,
                                         progress=progress, **collect)
    readers = {"contextual": contextual_probe, "in-document": in_document_probe}
    for probe in [p for p in PROBES if p in probes and p in readers]:
        samples = readers[probe](contextual_dir)  # None when the files are missing
        if samples is None:
            continue
        texts, labels, spans, probe_fp = samples
        name, identity, collect = checkpoint_request(checkpoint, probe, probe_fp, target_spans=spans)
        traces[probe] = cached_trace(name, identity, model, tokenizer, texts, labels=labels,
                                     progress=progress, **collect)
    model.train(was_training)
    return traces
