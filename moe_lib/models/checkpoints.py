"""Training checkpoints that are complete or absent, never half-written and loaded.

A checkpoint is a directory ``step-XXXXXX/`` holding the model (``save_pretrained``,
safetensors) and its tokenizer, so that it loads like any Hugging Face folder, ``trainer.pt`` (optimizer, RNG and data-position state) and ``state.json``
(step, tokens seen, recipe, seed). It is written under ``step-XXXXXX.partial/``, then
``manifest.json`` (size and sha256 of every other file) is written last, and the directory
is renamed into place. A crash before the rename leaves only a ``.partial`` directory,
which is ignored; a file truncated or altered afterwards no longer matches the manifest and
``verify`` names it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from moe_lib.data.sources import sha256_file

MANIFEST = "manifest.json"
STATE = "state.json"
TRAINER = "trainer.pt"
PREFIX = "step-"


class CorruptCheckpointError(RuntimeError):
    """A checkpoint whose files do not match its manifest (or that has none)."""


def step_dir(root: Path, step: int) -> Path:
    """Return the directory of the checkpoint at ``step`` under ``root``."""
    return Path(root) / f"{PREFIX}{step:06d}"


def write_json_atomic(path: Path, value) -> None:
    """Write ``value`` as JSON to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True))
    os.replace(tmp, path)


def save(root: Path, step: int, model, trainer_state: dict, state: dict, tokenizer=None) -> Path:
    """Write a checkpoint atomically and return its directory.

    Parameters
    ----------
    root
        The run's ``checkpoints/`` directory.
    step
        Optimizer steps taken so far.
    model
        A transformers model; saved with ``save_pretrained`` (safetensors).
    trainer_state
        Tensors and Python objects to resume from (optimizer state dict, RNG states, ...),
        saved with ``torch.save``.
    state
        JSON-native description (step, tokens seen, recipe, seed, ...), saved as state.json.
    tokenizer
        Saved beside the weights (``save_pretrained``): without it, transformers would build
        an empty tokenizer for the folder rather than fail.
    """
    final = step_dir(root, step)
    partial = final.with_name(final.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    model.save_pretrained(partial)
    if tokenizer is not None:
        tokenizer.save_pretrained(partial)
    torch.save(trainer_state, partial / TRAINER)
    write_json_atomic(partial / STATE, state)
    files = sorted(p for p in partial.rglob("*") if p.is_file())
    manifest = {
        str(p.relative_to(partial)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files
    }
    write_json_atomic(partial / MANIFEST, manifest)
    if final.exists():  # a rerun of the same step replaces the old one whole
        shutil.rmtree(final)
    os.rename(partial, final)
    return final


def verify(path: Path) -> dict:
    """Return the checkpoint's state.json after checking every file against the manifest.

    Raises
    ------
    CorruptCheckpointError
        Naming the checkpoint and the first file that is missing, of the wrong size or
        with the wrong sha256, or the missing manifest.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CorruptCheckpointError(f"checkpoint {path}: no {MANIFEST}; it was never completed")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise CorruptCheckpointError(f"checkpoint {path}: {MANIFEST} is not valid JSON ({err})") from err
    for name, expected in manifest.items():
        file = path / name
        if not file.is_file():
            raise CorruptCheckpointError(f"checkpoint {path}: file {name} is missing")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise CorruptCheckpointError(
                f"checkpoint {path}: file {name} has {size} bytes, manifest says {expected['bytes']} (truncated?)"
            )
        if sha256_file(file) != expected["sha256"]:
            raise CorruptCheckpointError(f"checkpoint {path}: file {name} does not match its sha256 in {MANIFEST}")
    extra = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    extra = [name for name in extra if name not in manifest and name != MANIFEST]
    if extra:
        raise CorruptCheckpointError(f"checkpoint {path}: files not in {MANIFEST}: {extra}")
    return json.loads((path / STATE).read_text())


def list_steps(root: Path) -> list[int]:
    """Return the steps of the completed (renamed) checkpoints under ``root``, ascending."""
    root = Path(root)
    if not root.is_dir():
        return []
    steps = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit():
            steps.append(int(p.name[len(PREFIX):]))
    return sorted(steps)


def load_trainer_state(path: Path) -> dict:
    """Return the optimizer/RNG/data-position state of a verified checkpoint."""
    verify(path)
    # weights_only=False: the state holds Python RNG tuples and numpy arrays we wrote ourselves.
    return torch.load(Path(path) / TRAINER, weights_only=False)


def load_model(path: Path, model_class):
    """Return the model of a checkpoint in float32, after verifying every file."""
    verify(path)
    return model_class.from_pretrained(path, dtype=torch.float32)


def weights_sha256(folder: Path) -> str:
    """Return the identity of a saved model's weights: the first 16 hex digits of the sha256
    over the bytes of its ``*.safetensors`` files, in name order.

    This is the one identity of a local model in every cache key (traces, tables, ablation
    runs): a retrained model whose weights differ by one bit gets keys of its own.
    """
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise CorruptCheckpointError(f"{folder}: no *.safetensors weights to identify the model by")
    return _sha256_of_files(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=256)
def _sha256_of_files(files: tuple) -> str:
    # Keyed by (path, size, mtime): the site asks for the same checkpoints over and over.
    digest = hashlib.sha256()
    for path, _, _ in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
