"""The contextual-token loader: target spans by the documented rule, token masks from offsets."""

from pathlib import Path

import numpy as np
import pytest

from moe_lib.data.contextual import (
    ContextualFormatError,
    find_target_spans,
    load_contextual_tokens,
    read_token_file,
    target_token_mask,
    write_token_file,
)
from moe_lib.data.vocab import load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "contextual"
TOKENIZER_DIR = Path(__file__).parents[1] / "datasets" / "tokenizer"
requires_default_tokenizer = pytest.mark.skipif(
    not (TOKENIZER_DIR / "tokenizer.json").is_file(), reason="datasets/tokenizer/tokenizer.json not built"
)


@pytest.mark.parametrize(
    ("text", "token", "spans"),
    [
        # leading-space token: the span covers the space
        ("The bank closed.", " bank", [(3, 8)]),
        # at the very start there is no space, so no occurrence of " bank" ...
        ("bank of the river", " bank", []),
        # ... unless the text itself starts with the space
        (" bank of the river", " bank", [(0, 5)]),
        # a symbol at the start
        (":x", ":", [(0, 1)]),
        # repeated, adjacent occurrences of a symbol
        ("a::b: c", ":", [(1, 2), (2, 3), (4, 5)]),
        # repeated word, one inside a longer word (" banks", " bank_id") not counted
        ("a bank, two banks, the bank_id and the bank.", " bank", [(1, 6), (38, 43)]),
        # glued to punctuation on the right
        ("Is it the bank?", " bank", [(9, 14)]),
        # at the very end
        ("river bank", " bank", [(5, 10)]),
        # non-ASCII text before: offsets count characters, not bytes
        ("Café — the bank", " bank", [(10, 15)]),
        ("über 100 € : ok", ":", [(11, 12)]),
        # a token without leading space that starts with a letter needs a non-word char before
        ("key keys monkey key", "key", [(0, 3), (16, 19)]),
        # case-sensitive
        ("The Bank and the bank", " bank", [(16, 21)]),
    ],
)
def test_find_target_spans_awkward_cases(text, token, spans):
    assert find_target_spans(text, token) == spans
    for start, end in spans:
        assert text[start:end] == token


def test_find_target_spans_rejects_empty_tokens():
    with pytest.raises(ValueError, match="non-empty"):
        find_target_spans("text", "")
    with pytest.raises(ValueError, match="only spaces"):
        find_target_spans("text", "  ")


def test_target_token_mask_by_overlap():
    # tokens: "The" (0,3) " bank" (3,8) " closed" (8,15) "." (15,16), plus a special (0,0)
    offsets = [(0, 0), (0, 3), (3, 8), (8, 15), (15, 16)]
    mask = target_token_mask(offsets, [(3, 8)])
    assert mask.tolist() == [False, False, True, False, False]
    # trimmed offsets (space left out of the token's range) still overlap
    assert target_token_mask([(0, 3), (4, 8)], [(3, 8)]).tolist() == [False, True]
    assert target_token_mask(offsets, []).sum() == 0


@requires_default_tokenizer
def test_mask_from_real_tokenizer_marks_exactly_the_target_tokens():
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    text = "Café: the bank, then the bank again; banks are not."
    spans = find_target_spans(text, " bank")
    encoding = tokenizer.encode(text, add_special_tokens=False)
    mask = target_token_mask(encoding.offsets, spans)
    target_id = tokenizer.token_to_id("Ġbank")
    assert mask.sum() == 2
    assert np.array(encoding.ids)[mask].tolist() == [target_id, target_id]


def test_loader_reads_files_with_and_without_provenance():
    table = load_contextual_tokens(FIXTURES / "valid")
    assert list(table.columns) == ["token", "meaning", "sample_index", "text", "source", "target_spans", "file"]
    assert len(table) == 12
    assert set(table["token"]) == {" bank", ":"}
    bank = table[table["token"] == " bank"]
    assert bank["source"].notna().all()
    assert table[table["token"] == ":"]["source"].isna().all()
    first = bank.iloc[0]
    assert (first.meaning, first.sample_index, first.target_spans) == ("finance", 0, [(3, 8)])
    assert all(len(spans) >= 1 for spans in table["target_spans"])


def test_write_then_read_round_trip(tmp_path):
    item = read_token_file(FIXTURES / "valid" / "bank.yaml")
    path = write_token_file(item, tmp_path / "bank.yaml")
    assert read_token_file(path) == item
    assert not list(tmp_path.glob("*.partial"))


def test_format_errors_name_the_file_and_field():
    with pytest.raises(ContextualFormatError, match=r"not_a_list/x\.yaml: expected a one-element list"):
        read_token_file(FIXTURES / "errors" / "not_a_list" / "x.yaml")
    with pytest.raises(ContextualFormatError, match=r"meanings\[0\] \(finance\): 'sample_sources' must parallel"):
        read_token_file(FIXTURES / "errors" / "sources_not_parallel" / "x.yaml")


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_contextual_tokens(tmp_path / "nope")


def test_builder_labels_by_rule_once_per_sample_and_is_seeded():
    from moe_lib.data.contextual_build import Snippet, _sentence_snippets, build_token
    from moe_lib.data.contextual_rules import Rule

    tokenizer = load_tokenizer(TOKENIZER_DIR) if (TOKENIZER_DIR / "tokenizer.json").is_file() else None
    if tokenizer is None:
        pytest.skip("datasets/tokenizer not built")
    doc = {
        "id": "sotu:x.txt", "domain": "speech",
        "text": "The national bank was chartered. It failed.\nThe bank of the river is steep.\n\n"
                "A bank and a bank. The river bank flooded in spring.",
    }
    snippets = _sentence_snippets(doc, "validation")
    assert [(s.text, s.source) for s in snippets[:2]] == [
        ("The national bank was chartered.", "sotu:x.txt:line 1 [validation]"),
        ("The bank of the river is steep.", "sotu:x.txt:line 2 [validation]"),
    ]
    snippets.append(Snippet("line", "    bank = banks[0]", "code", "python-stdlib:a.py:line 3 [train]", "train"))
    rules = [
        Rule("river", "land by water", "sentence", frozenset({"speech"}), r"\briver\b"),
        Rule("finance", "money", "sentence", frozenset({"speech"}), r"\bnational\b"),
    ]
    item = build_token(" bank", rules, snippets, tokenizer, seed=0, n_samples=10)
    river = item["meanings"][0]
    # "A bank and a bank." holds the token twice and the code line belongs to no rule.
    assert sorted(river["text_samples"]) == ["The bank of the river is steep.", "The river bank flooded in spring."]
    assert item["meanings"][1]["sample_sources"] == ["sotu:x.txt:line 1 [validation]"]
    assert build_token(" bank", rules, snippets, tokenizer, seed=0, n_samples=10) == item


def test_file_names_spell_out_symbols():
    from moe_lib.data.contextual_build import file_name

    assert [file_name(t) for t in [" bank", ":", " $", " {", "@"]] == [
        "bank.yaml", "colon.yaml", "space-dollar.yaml", "space-brace.yaml", "at.yaml"
    ]
