"""Routing traces of a training checkpoint on fixed probe sets, through the cache.

Two probes, both fixed for every checkpoint of every run so traces compare across training:

- ``domains``: held-out documents of every corpus domain (``training_data.probe_set``);
- ``contextual``: the polysemantic-token samples of ``datasets/contextual-tokens/``, with
  ``is_target`` marking the target token, when that folder exists.

Each trace is cached by ``moe_lib.core.cache.cached_trace`` under the identity
``{model, recipe, preset, step, tokens_seen, recipe_hash, probe}``, so a checkpoint is
traced once and a chapter reads the store without loading the model.
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from moe_lib.models import checkpoints
from moe_lib.training.training_data import probe_set, read_documents

MAX_LENGTH = 256  # tokens per probe text; documents are cut to this anyway
PROBES = ("domains", "contextual")


def model_name(recipe: str, preset: str) -> str:
    """Return the name a run's traces carry, e.g. ``"standard-default"``."""
    return f"{recipe}-{preset}"


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
        Which of ``PROBES`` to trace; ``"contextual"`` is skipped when its folder is missing.
    model, tokenizer
        The checkpoint's model and tokenizer if already in memory (the training loop
        passes them); otherwise loaded from ``checkpoint_dir`` and ``tokenizer_dir``.

    Returns
    -------
    dict
        ``{"domains": trace, "contextual": trace}`` (the latter only when its samples
        exist); traces follow moe_lib.core.schema, with ``router_logits``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import moe_lib.models.cross_layer  # noqa: F401  registers moe_crosslayer with AutoModel
    from moe_lib.core.cache import cached_trace

    state = checkpoints.verify(checkpoint_dir)
    if model is None:
        model = checkpoints.load_model(checkpoint_dir, AutoModelForCausalLM)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    was_training = model.training
    model.eval()
    name = model_name(state["recipe"], state["preset"])
    base = {
        "model": name,
        "recipe": state["recipe"],
        "preset": state["preset"],
        "step": state["step"],
        "tokens_seen": state["tokens_seen"],
        "recipe_hash": state["recipe_hash"],
    }
    # Attrs name the run, not the checkpoint's path on this machine.
    attrs = {**base, "checkpoint_step": state["step"]}
    unknown = set(probes) - set(PROBES)
    if unknown:
        raise ValueError(f"unknown probe(s) {sorted(unknown)}; choose from {PROBES}")
    traces = {}
    if "domains" in probes:
        texts, labels, probe_fp = domain_probe(validation_path)
        traces["domains"] = cached_trace(
            f"probe-domains-{name}", {**base, "probe": probe_fp}, model, tokenizer, texts, labels=labels,
            max_length=MAX_LENGTH, router_logits=True, predictions=True,
            attrs={**attrs, "dataset": "probe-domains"}, progress=progress,
        )
    contextual = contextual_probe(contextual_dir) if "contextual" in probes else None
    if contextual is not None:
        texts, labels, spans, probe_fp = contextual
        traces["contextual"] = cached_trace(
            f"probe-contextual-{name}", {**base, "probe": probe_fp}, model, tokenizer, texts, labels=labels,
            target_spans=spans, max_length=MAX_LENGTH, router_logits=True, predictions=True,
            attrs={**attrs, "dataset": "probe-contextual"}, progress=progress,
        )
    model.train(was_training)
    return traces
