"""A run's record: what identifies its checkpoints without their weights.

Every cache key of a local model holds the sha256 of its weights
(:func:`moe_lib.models.checkpoints.weights_sha256`). The weights are not committed, so each
default run's record is (``datasets/runs/<model>.json``): its recipe and seed, the threads
and library versions it was trained with, and every checkpoint's step, tokens seen and
weights sha256. A fresh clone computes the keys of the committed traces and tables from it;
a retrained run whose weights differ is told so, and gets keys (and stores) of its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from moe_lib.models import checkpoints
from moe_lib.models.registry import PROJECT_ROOT

RECORDS_DIR = PROJECT_ROOT / "datasets" / "runs"
# What a record says of each checkpoint, and of the run (from run.json).
CHECKPOINT_FIELDS = ("step", "tokens_seen", "weights_sha256")
RUN_FIELDS = ("recipe", "preset", "seed", "recipe_hash", "torch_threads", "versions", "machine")


def record_of(run_dir: Path, model: str) -> dict:
    """Return the record of a finished or partial run folder: its run.json fields and, for
    each completed checkpoint (verified against its manifest), step, tokens seen and weights."""
    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    root = run_dir / "checkpoints"
    saved = []
    for step in checkpoints.list_steps(root):
        path = checkpoints.step_dir(root, step)
        state = checkpoints.verify(path)
        saved.append({"step": state["step"], "tokens_seen": state["tokens_seen"],
                      "weights_sha256": checkpoints.weights_sha256(path)})
    return {"model": model, **{k: run.get(k) for k in RUN_FIELDS}, "checkpoints": saved}


def records_dir() -> Path:
    """Return the folder of the committed run records: $MOE_LIB_RUNS, else datasets/runs/."""
    return Path(os.environ.get("MOE_LIB_RUNS") or RECORDS_DIR)


def record_path(model: str, directory: Path | None = None) -> Path:
    """Return where the committed record of ``model`` lives."""
    return Path(directory or records_dir()) / f"{model}.json"


def committed_record(model: str, directory: Path | None = None) -> dict | None:
    """Return the committed record of ``model``, or None if there is none."""
    path = record_path(model, directory)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a valid run record ({error})") from error
    missing = [k for k in ("model", "recipe_hash", "seed", "checkpoints") if k not in record]
    if missing or record["model"] != model:
        raise ValueError(f"{path}: a run record needs model={model!r}, recipe_hash, seed and checkpoints; "
                         f"missing {missing}" if missing else f"{path}: its model is {record['model']!r}, not {model!r}")
    return record


def write_record(record: dict, directory: Path | None = None) -> Path:
    """Write ``record`` as the committed record of its model (atomically); return its path."""
    path = record_path(record["model"], directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.write_json_atomic(path, record)
    return path


def checkpoint_of(record: dict, step: int) -> dict | None:
    """Return what identifies checkpoint ``step`` of a record (model, recipe, preset, seed,
    recipe hash, step, tokens seen, weights sha256), or None if the record lacks it."""
    for saved in record["checkpoints"]:
        if saved["step"] == step:
            return {"model": record["model"], "recipe": record["recipe"], "preset": record["preset"],
                    "seed": record["seed"], "recipe_hash": record["recipe_hash"], **saved}
    return None


def differences(local: dict, committed: dict) -> list[str]:
    """Return what differs between a local run's record and the committed one, a line each:
    recipe, seed, each checkpoint's weights; empty when the local run is the committed one."""
    lines = [f"{field}: local {local.get(field)!r}, committed {committed.get(field)!r}"
             for field in ("recipe_hash", "seed") if local.get(field) != committed.get(field)]
    theirs = {c["step"]: c["weights_sha256"] for c in committed["checkpoints"]}
    for saved in local["checkpoints"]:
        if saved["step"] in theirs and saved["weights_sha256"] != theirs[saved["step"]]:
            lines.append(f"step {saved['step']}: weights {saved['weights_sha256']}, committed {theirs[saved['step']]}")
    return lines
