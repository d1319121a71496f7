"""Pruned checkpoints (issue 13): the same logits as masking the removed experts in the router,
for every family that can be sliced; the rest refused; the ``prune`` command and its bad input."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import moe_lib  # noqa: F401  registers the cross-layer recipe, as a user's session would
from moe_lib.cli import main
from moe_lib.core.capture import find_moe_layers
from moe_lib.interventions.pruning import (
    REMOVED_FILE,
    UnprunableFamilyError,
    check_prunable,
    least_important,
    prune_model,
    save_pruned,
)
from moe_lib.interventions.removal import ablate
from moe_lib.models.families import family_of, n_experts
from moe_lib.models.tiny import TINY_CONFIGS, tiny_model, tiny_tokenizer

REFUSED = {"deepseek_v2", "deepseek_v3", "glm4_moe", "dots1", "ernie4_5_moe"}


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_pruned_checkpoint_equals_the_rerouting_ablation(model_type, token_batch, tmp_path):
    model = tiny_model(model_type)
    if model_type in REFUSED:
        with pytest.raises(UnprunableFamilyError, match=f"model_type '{model_type}' cannot be pruned"):
            check_prunable(model.config)
        return
    layers = find_moe_layers(model, family_of(model.config))
    removed = {layer: [(layer + 3 * i) % 8 for i in range(3)] for layer in layers}  # other experts in each layer
    save_pruned(prune_model(model, removed), None, removed, tmp_path / "pruned", {"test": model_type})
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert n_experts(pruned.config) == 5
    with torch.no_grad():
        with ablate(model, experts=removed, reroute=True):
            rerouted = model(**token_batch).logits
        with ablate(model, experts=removed, renormalize=True):
            dropped_slots = model(**token_batch).logits
        logits = pruned(**token_batch).logits
    mask = token_batch["attention_mask"].bool()
    torch.testing.assert_close(logits[mask], rerouted[mask], rtol=1e-5, atol=1e-5)
    # dropping the slots keeps the router's choice: not what a pruned model computes
    assert not torch.allclose(logits[mask], dropped_slots[mask], atol=1e-4)
    listing = json.loads((tmp_path / "pruned" / REMOVED_FILE).read_text())
    assert listing["removed"] == {str(layer): sorted(ids) for layer, ids in removed.items()}
    assert all(len(kept) == 5 for kept in listing["kept"].values())


def test_prune_model_refuses_uneven_or_missing_layers():
    model = tiny_model("olmoe")
    with pytest.raises(ValueError, match="one count for all layers"):
        prune_model(model, {0: [1], 1: [1, 2], 2: [1], 3: [1]})
    with pytest.raises(ValueError, match="every MoE layer"):
        prune_model(model, {0: [1]})
    with pytest.raises(ValueError, match="--keep 1"):
        prune_model(model, {layer: range(7) for layer in range(4)})


def test_least_important_takes_the_lowest_scores_and_breaks_ties_by_id():
    import xarray as xr

    score = xr.DataArray([[3.0, 1.0, 1.0, 0.5], [0.0, 2.0, 5.0, 1.0]], dims=("layer", "expert"),
                         coords={"layer": [2, 5], "expert": range(4)})
    assert least_important(score, 2) == {2: [1, 3], 5: [0, 3]}
    assert least_important(score, 3) == {2: [1, 2, 3], 5: [0, 1, 3]}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny models saved with their tokenizer, as `load` reads a local folder."""
    root = tmp_path_factory.mktemp("models")
    tokenizer = tiny_tokenizer()
    folders = {}
    for model_type in ("olmoe", "deepseek_v3"):
        tiny_model(model_type).save_pretrained(root / model_type)
        tokenizer.save_pretrained(root / model_type)
        folders[model_type] = root / model_type
    return folders


@pytest.fixture
def texts(tmp_path):
    path = tmp_path / "texts.jsonl"
    lines = [{"text": f"def f{i}(x):\n    return x * {i} + json.dumps([x, {i}])"} for i in range(4)]
    path.write_text("\n".join(json.dumps(line) for line in lines))
    return path


def test_prune_command_writes_a_checkpoint_that_loads_and_lists_the_removed(saved, texts, tmp_path, token_batch):
    out = tmp_path / "pruned"
    assert main(["prune", str(saved["olmoe"]), "--texts", str(texts), "--criterion", "reap", "--keep", "5",
                 "--out", str(out), "--max-length", "16"]) == 0
    listing = json.loads((out / REMOVED_FILE).read_text())
    assert listing["criterion"] == "reap" and listing["n_experts_after"] == 5
    removed = {int(layer): ids for layer, ids in listing["removed"].items()}
    assert sorted(removed) == [0, 1, 2, 3] and all(len(ids) == 3 for ids in removed.values())
    pruned = AutoModelForCausalLM.from_pretrained(out).eval()
    original = AutoModelForCausalLM.from_pretrained(saved["olmoe"]).eval()
    with torch.no_grad(), ablate(original, experts=removed, reroute=True):
        expected = original(**token_batch).logits
    with torch.no_grad():
        torch.testing.assert_close(pruned(**token_batch).logits, expected, rtol=1e-5, atol=1e-5)
    assert (out / "tokenizer.json").is_file()


@pytest.mark.parametrize(("model_type", "args", "named"), [
    ("olmoe", ["--criterion", "popularity", "--keep", "4"], "--criterion"),
    ("olmoe", ["--criterion", "frequency", "--keep", "0"], "--keep 0"),
    ("olmoe", ["--criterion", "frequency", "--keep", "8"], "--keep 8"),
    ("olmoe", ["--criterion", "frequency", "--keep", "1"], "--keep 1"),  # fewer than top_k
    ("deepseek_v3", ["--criterion", "frequency", "--keep", "4"], "deepseek_v3"),
])
def test_prune_command_names_a_bad_argument_and_writes_nothing(saved, texts, tmp_path, capsys, model_type, args,
                                                               named):
    out = tmp_path / "pruned"
    argv = ["prune", str(saved[model_type]), "--texts", str(texts), "--out", str(out), *args]
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own refusal of an unknown choice
        code = exit.code
    assert code != 0
    assert named in capsys.readouterr().err
    assert list(tmp_path.glob("pruned*")) == []


def test_prune_command_refuses_a_texts_file_without_text(saved, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    out = tmp_path / "pruned"
    assert main(["prune", str(saved["olmoe"]), "--texts", str(empty), "--criterion", "weight", "--keep", "4",
                 "--out", str(out)]) == 1
    assert "--texts" in capsys.readouterr().err
    assert not out.exists()
