"""A command whose input is missing names the command that builds it (issue 14: on a fresh
clone, `train standard --preset tiny` said only "[Errno 2] No such file or directory")."""

import pytest

from moe_lib import cli
from moe_lib.commands.inputs import MissingInputError, require_corpus, require_tokenizer


@pytest.mark.parametrize("argv", [
    ["train", "standard", "--preset", "tiny", "--no-trace"],
    ["tokenizer"],
    ["datasets", "build-contextual"],
], ids=["train", "tokenizer", "build-contextual"])
def test_a_missing_corpus_names_the_corpus_command(argv, tmp_path, capsys):
    code = cli.main([*argv, "--corpus", str(tmp_path / "no-corpus"), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 1
    assert "the corpus's train split is missing" in error and "`python -m moe_lib corpus`" in error
    assert "Errno" not in error and not (tmp_path / "out").exists()


def test_a_missing_tokenizer_names_the_tokenizer_command(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "validation"):
        (corpus / f"{split}.jsonl").write_text("")
    code = cli.main(["train", "standard", "--preset", "tiny", "--corpus", str(corpus),
                     "--tokenizer", str(tmp_path / "no-tokenizer"), "--out", str(tmp_path / "out")])
    assert code == 1 and "`python -m moe_lib tokenizer`" in capsys.readouterr().err


def test_present_inputs_pass_through(tmp_path):
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("")
    assert require_corpus(tmp_path) == tmp_path
    with pytest.raises(MissingInputError, match="tokenizer"):
        require_tokenizer(tmp_path)
    assert issubclass(MissingInputError, FileNotFoundError)  # cli.main reports it as an error, no traceback
