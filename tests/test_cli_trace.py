"""`python -m moe_lib trace`: a saved model folder to a schema store, and clear errors."""

import json

import pytest
import torch

from moe_lib.cli import main
from moe_lib.core.trace_store import open_trace


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tokenizer):
    from moe_lib.models.tiny import tiny_model

    folder = tmp_path_factory.mktemp("saved") / "tiny-qwen2-moe"
    tiny_model("qwen2_moe").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_trace_command_writes_a_schema_store(saved_model, tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(json.dumps({"text": t, "domain": d}) for t, d in [("a bank", "x"), ("a key", "y")]))
    out = tmp_path / "t.zarr"
    argv = ["trace", str(saved_model), "--texts", str(texts), "--out", str(out), "--router-logits"]
    assert main(argv + ["--label-fields", "domain"]) == 0
    ds = open_trace(out)
    assert ds.attrs["family"] == "qwen2_moe" and "router_logits" in ds and "shared_gate" in ds
    assert set(ds.domain.values) == {"x", "y"}
    assert list(ds.layer.values) == [1, 2, 3]  # layer 0 is dense in this config
    assert "predicted_id" not in ds


def test_trace_command_stores_predictions(saved_model, tmp_path):
    from moe_lib.models.registry import load

    texts = tmp_path / "texts.txt"
    texts.write_text("the river bank\na key to the door\n")
    out = tmp_path / "t.zarr"
    assert main(["trace", str(saved_model), "--texts", str(texts), "--out", str(out), "--predictions"]) == 0
    ds = open_trace(out)
    model, tokenizer = load(str(saved_model))
    ids = torch.tensor([tokenizer("the river bank")["input_ids"]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits[0].argmax(-1).numpy()
    assert ds.predicted_id.values[ds.seq.values == 0].tolist() == expected.tolist()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "no texts"),
        (b"fine\n\xff\xfe broken\n", "line 2 is not valid UTF-8"),
    ],
)
def test_bad_texts_files_are_named_with_line(saved_model, tmp_path, capsys, content, message):
    texts = tmp_path / "texts.txt"
    texts.write_bytes(content)
    assert main(["trace", str(saved_model), "--texts", str(texts), "--out", str(tmp_path / "t.zarr")]) == 1
    err = capsys.readouterr().err
    assert str(texts) in err and message in err
    assert not (tmp_path / "t.zarr").exists()


def test_jsonl_without_text_field(saved_model, tmp_path, capsys):
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    assert main(["trace", str(saved_model), "--texts", str(texts), "--out", str(tmp_path / "t.zarr")]) == 1
    assert "line 2 has no string field 'text'" in capsys.readouterr().err


def test_missing_model_and_existing_output(saved_model, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("hello\n")
    assert main(["trace", str(tmp_path / "nowhere"), "--texts", str(texts), "--out", str(tmp_path / "a.zarr")]) == 1
    assert "is not a registered model" in capsys.readouterr().err
    existing = tmp_path / "results"
    existing.mkdir()
    (existing / "keep.csv").write_text("1,2")
    assert main(["trace", str(saved_model), "--texts", str(texts), "--out", str(existing)]) == 1
    assert "not a trace store" in capsys.readouterr().err
    assert (existing / "keep.csv").read_text() == "1,2"


def test_every_command_has_help(capsys):
    from moe_lib.cli import COMMAND_MODULES, build_parser

    parser = build_parser()
    names = parser._subparsers._group_actions[0].choices
    assert len(names) == len(COMMAND_MODULES)  # one command per module
    for name in names:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage:" in capsys.readouterr().out
