"""The main command's build (issue 17): a model is its weights in every cache key, a fresh
clone finds the committed stores through the committed run records, a retrained run whose
weights differ gets stores of its own, the preflight fails early, and the whole build from
scratch runs on the tiny preset in a fresh copy of the project."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from moe_lib import site
from moe_lib.commands import build, preflight
from moe_lib.core import cache
from moe_lib.site import ablations as site_ablations
from moe_lib.site import probes as site_probes
from moe_lib.training import run_record

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL = "standard-tiny"


def _save_run(run: Path, init_seed: int) -> Path:
    """Save a freshly initialised standard-tiny (torch seed ``init_seed``) as the final
    checkpoint of a run folder, with its run.json; return the checkpoint."""
    import torch
    from transformers import AutoTokenizer

    from moe_lib.models import checkpoints
    from moe_lib.training.train import RECIPES, environment

    recipe_name, preset, recipe = site.own_recipe(MODEL)
    step, tokens = site.schedule(MODEL)[-1]
    tokenizer = AutoTokenizer.from_pretrained(PROJECT_ROOT / "datasets" / "tokenizer")
    special = {k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    torch.manual_seed(init_seed)
    built = RECIPES[recipe_name].build_model(recipe, len(tokenizer), special)
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"recipe": recipe_name, "preset": preset, "seed": 0,
                                              "recipe_hash": recipe.hash(), **environment()}))
    state = {"step": step, "tokens_seen": tokens, "recipe": recipe_name, "preset": preset,
             "recipe_hash": recipe.hash(), "seed": 0, "elapsed_s": 0.0, "train_loss": 0.0}
    return checkpoints.save(run / "checkpoints", step, built, {}, state, tokenizer=tokenizer)


def _ablation_store(weights: str, run: int) -> None:
    """Cache a held-out ablation table of MODEL as made from ``weights`` at time ``run``."""
    identity = {"model": MODEL, "weights_sha256": weights, "run": run}
    rows = pd.DataFrame({"item": [0], "nll": [1.0], "n_predicted": [1], "condition": "baseline",
                         "random_control": False, "model": MODEL, "run": run})
    cache.cached_table("ablation-heldout", identity, lambda: rows)
    os.utime(cache.store_path("ablation-heldout", identity), (run, run))


def test_weights_that_differ_from_the_committed_run_get_keys_of_their_own(tmp_path, monkeypatch, capsys):
    for name in ("CACHE", "MODELS", "RUNS"):
        monkeypatch.setenv(f"MOE_LIB_{name}", str(tmp_path / name.lower()))
    models, committed_run = tmp_path / "models", tmp_path / "models" / MODEL
    _save_run(committed_run, init_seed=0)
    committed_key, committed_weights = site.trace_key(MODEL), site.weights_sha256(MODEL)
    run_record.write_record(run_record.record_of(committed_run, MODEL))
    _ablation_store(committed_weights, run=1)
    _ablation_store("0123456789abcdef", run=2)  # newer, made from other weights
    shown = lambda: set(site_ablations.latest_cached("ablation-heldout", site_ablations.project_weights([MODEL]))["run"])  # noqa: E731

    # a fresh clone: no weights, only the committed record
    shutil.move(committed_run, tmp_path / "elsewhere")
    assert site.trace_key(MODEL) == committed_key and site.weights_sha256(MODEL) == committed_weights
    assert shown() == {1}

    # retrained with other weights: new keys, the committed stores are not served, the build says so
    _save_run(models / MODEL, init_seed=1)
    site._described.clear()
    assert site.weights_sha256(MODEL) != committed_weights and site.trace_key(MODEL) != committed_key
    assert shown() == set()
    build.check_records([MODEL], write=False)
    assert "your retrained weights differ from the committed run" in capsys.readouterr().out

    # retrained to the same bits: the committed stores serve it
    shutil.rmtree(models / MODEL)
    shutil.move(tmp_path / "elsewhere", models / MODEL)
    site._described.clear()
    assert site.trace_key(MODEL) == committed_key and shown() == {1}
    build.check_records([MODEL], write=False)
    assert "weights equal the committed run's" in capsys.readouterr().out


def test_a_model_with_neither_run_nor_record_says_to_build_from_scratch(tmp_path, monkeypatch):
    for name in ("CACHE", "MODELS", "RUNS"):
        monkeypatch.setenv(f"MOE_LIB_{name}", str(tmp_path / name.lower()))
    with pytest.raises(site.MissingDataError, match="build --from-scratch"):
        site.trace_key("standard-default")


def test_a_record_for_another_model_is_refused(tmp_path):
    (tmp_path / "standard-default.json").write_text(json.dumps(
        {"model": "cross-layer-default", "recipe_hash": "x", "seed": 0, "checkpoints": []}))
    with pytest.raises(ValueError, match="its model is 'cross-layer-default'"):
        run_record.committed_record("standard-default", tmp_path)


def test_preflight_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no quarto, no apt-get, no npm
    assert not preflight.check_quarto().ok and "Quarto" in preflight.check_quarto().detail
    assert not preflight.check_debian().ok and "apt-get" in preflight.check_debian().detail
    assert not preflight.check_npm().ok and "npm" in preflight.check_npm().detail
    disk = preflight.check_disk(1e6, tmp_path)
    assert not disk.ok and "1000000.0 GB needed" in disk.detail
    assert preflight.check_disk(0.0, tmp_path).ok


def test_preflight_refreshes_a_stale_package_list_once(monkeypatch):
    from moe_lib.data.sources import SOURCES

    pinned = [s for s in SOURCES.values() if s.registry == "debian"]
    calls = []

    def fake_run(command):
        calls.append(command[:2])
        listed = any(c[:2] == ["apt-get", "update"] for c in calls)
        policy = "".join(f" {s.version} 500\n" for s in pinned) if listed else " 0.0-1 500\n"
        return subprocess.CompletedProcess(command, 0, stdout=policy, stderr="")

    monkeypatch.setattr(preflight, "_run", fake_run)
    monkeypatch.setattr(preflight.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 0)
    assert preflight.check_debian().ok
    assert calls.count(["apt-get", "update"]) == 1


def _fresh_copy(destination: Path) -> Path:
    """Copy the project's tracked and untracked (not ignored) files, without the cache's
    stores, as a fresh clone without the committed caches would have them."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        source = PROJECT_ROOT / name
        if name.startswith("data-cache/") and name != "data-cache/README.md" or not source.is_file():
            continue
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination / name)
    return destination


@pytest.mark.slow
def test_the_build_from_scratch_runs_every_step_on_the_tiny_preset_in_a_fresh_copy(tmp_path):
    clone = _fresh_copy(tmp_path / "clone")
    corpus = site_probes.tiny_corpus(tmp_path / "corpus")  # the registries are not wanted in tests
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_LIB_")}
    command = [sys.executable, "-m", "moe_lib", "build", "--preset", "tiny", "--seeds", "0", "--corpus", str(corpus),
               "--mmlu-source", "csv", "--mmlu-root", str(PROJECT_ROOT / "tests" / "fixtures" / "mmlu")]
    done = subprocess.run([*command, "--from-scratch"], cwd=clone, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for step in ("[preflight] ok", "domain probe",
                 "models standard-tiny, cross-layer-tiny",
                 "no committed record", "traces of standard-tiny", "analyses of chapters/ablations.qmd"):
        assert step in done.stdout, step
    for model in ("standard-tiny", "cross-layer-tiny"):
        run = json.loads((clone / "datasets" / "saved-models" / model / "run.json").read_text())
        assert run["torch_threads"] == 1 and {"torch", "transformers", "numpy"} <= set(run["versions"])
    stores = sorted(p.name for p in (clone / "data-cache").glob("*.zarr"))
    assert any(s.startswith("ablation-heldout-") for s in stores) and any(s.startswith("ablation-mmlu-") for s in stores)
    # one table per run (tables carry no model name, so count them), and the information
    # measures once per run for each of the three sample probes (alone, in its document,
    # after other documents' text). Other seeds are read by the same code: test_seeds (seed 1
    # of the tiny preset) and the chapters on the committed caches (three seeds a recipe).
    made = cache.list_stores(clone / "data-cache")
    assert (made.name == "load-balance").sum() == 2 and (made.name == "expert-information").sum() == 6

    # the default build then reads what is cached and computes nothing
    again = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in (clone / "data-cache").glob("*.zarr")) == stores
