"""One table of the models moe_lib knows by name, and ``load`` for any of them.

A name in REGISTRY, a hub id (``org/name``), a local folder written by save_pretrained
(tokenizer beside it) or a training run of ``python -m moe_lib train`` all load the same
way. A revision names a hub branch (OLMoE's training checkpoints) or, for a training run,
one of its checkpoints (``step-000480``); without one a run loads its final checkpoint.
Hub checkpoints need network access to the Hugging Face hub; the project's own models are
rebuilt by ``python -m moe_lib train``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from moe_lib.models.families import family_of

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAVED_MODELS = PROJECT_ROOT / "datasets" / "saved-models"


@dataclass(frozen=True)
class ModelSpec:
    """A model known by name: where it comes from and its routing shape (from its config)."""

    name: str
    source: str  # hub id, or a folder relative to the project root
    family: str
    n_layers: int
    n_experts: int
    top_k: int
    revision: str | None = None
    dtype: str = "bfloat16"
    note: str = ""
    revisions: dict[str, str] = field(default_factory=dict)  # named training checkpoints


# Shapes from each checkpoint's config.json on the hub (layers = decoder layers).
REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "olmoe-1b-7b",
            "allenai/OLMoE-1B-7B-0924",
            "olmoe",
            16,
            64,
            8,
            note="Intermediate training checkpoints are hub branches named stepN-tokensMB; "
            "pass one as --revision (list them with huggingface_hub.list_repo_refs).",
        ),
        ModelSpec(
            "olmoe-1b-7b-0125-instruct",
            "allenai/OLMoE-1B-7B-0125-Instruct",
            "olmoe",
            16,
            64,
            8,
            note="The instruction-tuned 0125 release. Its MMLU ablations as published elsewhere used its chat "
            "template and three solved examples: `ablate ... --benchmark mmlu --prompt chat --n-shots 3`.",
        ),
        ModelSpec("qwen1.5-moe-a2.7b", "Qwen/Qwen1.5-MoE-A2.7B", "qwen2_moe", 24, 60, 4),
        ModelSpec("deepseek-v2-lite", "deepseek-ai/DeepSeek-V2-Lite", "deepseek_v2", 27, 64, 6),
        ModelSpec("qwen3-30b-a3b", "Qwen/Qwen3-30B-A3B", "qwen3_moe", 48, 128, 8),
        ModelSpec("gpt-oss-20b", "openai/gpt-oss-20b", "gpt_oss", 24, 32, 4),
        ModelSpec("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1", "mixtral", 32, 8, 2),
        ModelSpec(
            "standard-default",
            "datasets/saved-models/standard-default",
            "olmoe",
            4,
            16,
            2,
            dtype="float32",
            note="The project's own standard MoE; rebuilt by `python -m moe_lib train standard`.",
        ),
        ModelSpec(
            "cross-layer-default",
            "datasets/saved-models/cross-layer-default",
            "moe_crosslayer",
            4,
            16,
            2,
            dtype="float32",
            note="The project's own cross-layer-routing MoE; `python -m moe_lib train cross-layer`.",
        ),
    ]
}


class ModelNotFoundError(FileNotFoundError):
    """A model name that is neither registered, nor a local folder, nor loadable from the hub."""


def resolve(name_or_path: str, revision: str | None = None) -> tuple[str, ModelSpec | None]:
    """Return (what from_pretrained should load, the registry entry if any).

    A training run's folder resolves to one of its checkpoints: ``revision`` if given,
    else the last one, which must be the run's final step.
    """
    spec = REGISTRY.get(name_or_path)
    if spec is not None:
        source = spec.source
        if _looks_like_hub_id(source):
            return source, spec
        path = PROJECT_ROOT / source
        if not path.exists():
            raise ModelNotFoundError(f"{name_or_path}: {path} does not exist yet. {spec.note}")
    else:
        path = Path(name_or_path)
    if path.exists():
        if is_training_run(path):
            return str(run_checkpoint(path, revision)), spec
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path}: a folder without config.json is not a saved model")
        if revision is not None:
            raise ModelNotFoundError(f"{path}: a saved folder has no revisions (asked for {revision!r})")
        return str(path), spec
    if _looks_like_hub_id(name_or_path):
        return name_or_path, None
    raise ModelNotFoundError(
        f"{name_or_path!r} is not a registered model ({', '.join(REGISTRY)}), "
        "an existing folder, nor a hub id of the form org/name"
    )


def is_training_run(path: Path) -> bool:
    """True for a run folder of ``python -m moe_lib train`` (it holds checkpoints/ and run.json)."""
    return (Path(path) / "checkpoints").is_dir() and (Path(path) / "run.json").is_file()


def run_checkpoint(run_dir: Path, revision: str | None = None) -> Path:
    """Return a verified checkpoint of a training run: ``revision`` (``step-000480``), or the
    final one; an unfinished run is refused rather than passed off as the trained model."""
    import json

    from moe_lib.models import checkpoints

    root = Path(run_dir) / "checkpoints"
    if revision is not None:
        path = root / revision
        if not path.is_dir():
            names = [checkpoints.step_dir(root, s).name for s in checkpoints.list_steps(root)]
            raise ModelNotFoundError(f"{run_dir}: no checkpoint {revision!r}; it has {names}")
    else:
        steps = checkpoints.list_steps(root)
        if not steps:
            raise ModelNotFoundError(f"{run_dir}: no completed checkpoint yet; train (or resume) it first")
        step, path = steps[-1], checkpoints.step_dir(root, steps[-1])
        n_steps = json.loads((Path(run_dir) / "run.json").read_text())["hyperparameters"]["n_steps"]
        if step < n_steps:
            raise ModelNotFoundError(
                f"{run_dir}: training stopped at step {step} of {n_steps}; resume it with "
                f"`python -m moe_lib train ... --out {run_dir}`, or load a checkpoint by "
                f"revision={path.name!r}"
            )
    checkpoints.verify(path)
    return path


def _looks_like_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/")) and not Path(source).exists()


def list_revisions(name_or_id: str) -> list[str]:
    """Return a model's training checkpoints: a hub model's branches (needs the hub), or
    the checkpoints of one of our training runs.

    OLMoE-1B-7B-0924 publishes its intermediate checkpoints as branches; trace one with
    ``load(name, revision=branch)`` or ``python -m moe_lib trace ... --revision BRANCH``.
    """
    from huggingface_hub import list_repo_refs

    from moe_lib.models import checkpoints

    spec = REGISTRY.get(name_or_id)
    path = PROJECT_ROOT / spec.source if spec and not _looks_like_hub_id(spec.source) else Path(name_or_id)
    if is_training_run(path):
        root = path / "checkpoints"
        return [checkpoints.step_dir(root, step).name for step in checkpoints.list_steps(root)]
    source, _ = resolve(name_or_id)
    if not _looks_like_hub_id(source):
        raise ModelNotFoundError(f"{name_or_id}: a local model has no hub revisions")
    return sorted(branch.name for branch in list_repo_refs(source).branches)


def default_dtype(device: str) -> torch.dtype:
    """bf16 on accelerators (what the checkpoints ship in), fp32 on the CPU (exact checks)."""
    return torch.float32 if device == "cpu" else torch.bfloat16


def load(
    name_or_path: str,
    *,
    revision: str | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    device_map: str | None = None,
    trust_remote_code: bool = False,
):
    """Return ``(model, tokenizer)`` for a registry name, hub id or local folder.

    Parameters
    ----------
    revision : hub branch, tag or commit (e.g. an OLMoE training checkpoint), or a checkpoint
        of a training run (``step-000480``).
    device : where to put the model ("cpu", "cuda", "cuda:1", ...), unless ``device_map``.
    dtype : torch dtype or its name; defaults to bf16 on GPU, fp32 on CPU.
    device_map : "auto" spreads a model too big for one GPU over all of them (accelerate).
    trust_remote_code : only when the user asks for it; no registered model needs it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import moe_lib.models  # noqa: F401  (registers the project's own architectures)

    source, spec = resolve(name_or_path, revision)
    if not _looks_like_hub_id(source):
        revision = None  # a local folder has no branches; a run's revision chose the checkpoint
    else:
        revision = revision or (spec.revision if spec else None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or default_dtype(device)
    kwargs = dict(revision=revision, dtype=dtype, trust_remote_code=trust_remote_code)
    try:
        if device_map:
            model = AutoModelForCausalLM.from_pretrained(source, device_map=device_map, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs).to(device)
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    except OSError as error:
        hint = " (HF_HUB_OFFLINE=1 is set: no hub access)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise ModelNotFoundError(f"{name_or_path}: could not load from {source}{hint}: {error}") from error
    _check_tokenizer(source, tokenizer, model.config)
    family_of(model.config)  # fail early, listing the supported families
    return model.eval(), tokenizer


def _check_tokenizer(source: str, tokenizer, config) -> None:
    """Refuse a tokenizer that cannot be the model's: for a folder without tokenizer files,
    transformers builds an empty one (2 entries) instead of failing. Embedding tables are
    often padded past the tokenizer (OLMoE: 50,304 rows, 50,280 tokens), never to twice it."""
    vocab_size = getattr(config.get_text_config(), "vocab_size", None)
    if vocab_size and len(tokenizer) < vocab_size / 2:
        raise ModelNotFoundError(
            f"{source}: its tokenizer has {len(tokenizer)} entries for a vocabulary of {vocab_size}; "
            "the folder lacks the model's tokenizer files (save them with tokenizer.save_pretrained)"
        )


def model_identity(model, name: str | None = None, revision: str | None = None) -> dict:
    """Return what identifies a loaded model's weights, for cache keys and trace attrs."""
    config = model.config
    identity = {
        "model": name or str(getattr(config, "_name_or_path", "") or config.model_type),
        "family": config.model_type,
        "revision": revision or getattr(config, "_commit_hash", None),
    }
    from moe_lib.models.checkpoints import weights_sha256

    source = Path(str(getattr(config, "_name_or_path", "")))
    if source.is_dir() and any(source.glob("*.safetensors")):  # local: the bytes of its weights
        identity["weights_sha256"] = weights_sha256(source)
    elif identity["revision"] is None:  # an in-memory model: hash its parameters
        identity["weights_sha256"] = _sha256_parameters(model)
    return identity


def _sha256_parameters(model) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
