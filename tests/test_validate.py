"""The contextual-token validator: one fixture per kind of problem, each caught with its message."""

import argparse
from pathlib import Path

import pytest

from moe_lib.commands import datasets as datasets_command
from moe_lib.data.validate import count_pieces, format_report, validate_directory
from moe_lib.data.vocab import load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "contextual"
TOKENIZER_DIR = Path(__file__).parents[1] / "datasets" / "tokenizer"
pytestmark = pytest.mark.skipif(
    not (TOKENIZER_DIR / "tokenizer.json").is_file(), reason="datasets/tokenizer/tokenizer.json not built"
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER_DIR)


def problems_of(kind, tokenizer, **limits):
    limits = {"min_meanings": 3, "min_samples": 2} | limits
    report = validate_directory(FIXTURES / "errors" / kind, tokenizer, **limits)
    return [str(problem) for problem in report.problems]


def test_valid_fixture_has_no_problems(tokenizer):
    report = validate_directory(FIXTURES / "valid", tokenizer, min_meanings=3, min_samples=2)
    assert report.ok, format_report(report)
    assert (report.n_files, report.n_samples) == (2, 12)
    assert report.pieces_table().loc[" bank", "default"] == 1


def test_raising_the_minimum_makes_the_valid_fixture_fail(tokenizer):
    report = validate_directory(FIXTURES / "valid", tokenizer, min_meanings=4, min_samples=3)
    messages = [str(problem) for problem in report.problems]
    assert "bank.yaml: token ' bank': 3 meanings, at least 4 required" in messages
    assert "bank.yaml: token ' bank': meaning 'finance': 2 samples, at least 3 required" in messages


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("not_a_list", ["x.yaml: expected a one-element list holding a mapping, got dict"]),
        (
            "sources_not_parallel",
            ["x.yaml: token ' bank': meanings[0] (finance): 'sample_sources' must parallel 'text_samples' "
             "(2 samples, 1 sources)"],
        ),
        ("not_single_token", ["x.yaml: token ' bankxq': not a single token for the default tokenizer: ['Ġbank', 'x', 'q']"]),
        ("too_few_meanings", ["x.yaml: token ' bank': 2 meanings, at least 3 required"]),
        ("too_few_samples", ["x.yaml: token ' bank': meaning 'river': 1 samples, at least 2 required"]),
        (
            "token_missing",
            ["x.yaml: token ' bank': meaning 'hardware': sample 1: sample does not contain the token: "
             "'Each banks holds 8 pins.'"],
        ),
        (
            "duplicate_sample",
            ["x.yaml: token ' bank': meaning 'hardware': sample 0: duplicate of meaning 'river' sample 0"],
        ),
        ("duplicate_label", ["x.yaml: token ' bank': meaning 'river': meaning label used 2 times"]),
        (
            "not_cut_as_token",
            ["x.yaml: token ':': meaning 'block opener': sample 0: occurrence at characters 13-14 is tokenized "
             "as ['):'], not as the token"],
        ),
        ("duplicate_token", ["b.yaml: token ' bank': token also defined in a.yaml"]),
    ],
)
def test_each_problem_is_caught_with_its_message(tokenizer, kind, expected):
    assert problems_of(kind, tokenizer) == expected


def test_other_tokenizers_are_reported_not_judged(tokenizer):
    report = validate_directory(FIXTURES / "valid", tokenizer, {"same": tokenizer}, min_samples=2)
    assert report.ok
    assert report.pieces_table().to_dict() == {"default": {" bank": 1, ":": 1}, "same": {" bank": 1, ":": 1}}
    assert count_pieces(tokenizer, " bankxq") == 3


def run_validate(directory, **overrides):
    args = argparse.Namespace(
        directory=Path(directory), default_tokenizer=str(TOKENIZER_DIR), tokenizer=[], sources=Path("no-sources"),
        min_meanings=3, min_samples=2,
    )
    for name, value in overrides.items():
        setattr(args, name, value)
    return datasets_command.run_validate(args)


def test_command_exit_codes(tmp_path, capsys):
    assert run_validate(FIXTURES / "valid") == 0
    assert "2 files, 12 samples: valid" in capsys.readouterr().out
    assert run_validate(FIXTURES / "errors" / "token_missing") == 1
    assert "ERROR x.yaml: token ' bank': meaning 'hardware': sample 1" in capsys.readouterr().out
    assert run_validate(tmp_path / "missing") == 2
    assert "is not a directory" in capsys.readouterr().out
    assert run_validate(FIXTURES / "valid", tokenizer=[str(tmp_path / "nothing.json")]) == 2
    assert run_validate(FIXTURES / "valid", tokenizer=[str(TOKENIZER_DIR / "tokenizer.json")]) == 0
    assert "tokenizer: 2 of 2 tokens are single tokens" in capsys.readouterr().out


def test_committed_contextual_tokens_meet_the_bar(tokenizer):
    directory = Path(__file__).parents[1] / "datasets" / "contextual-tokens"
    report = validate_directory(directory, tokenizer, min_meanings=3, min_samples=40)
    assert report.ok, format_report(report)[:2000]
    assert report.n_files >= 25
