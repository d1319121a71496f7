"""What a command reads, checked before it starts: a missing input names the command that
builds it, so a newcomer on a fresh clone is told what to run instead of seeing
"[Errno 2] No such file or directory".
"""

from __future__ import annotations

from pathlib import Path

# Each input a command may need, and the command that makes it. The corpus and the
# sources are git-ignored (rebuilt from the registries); the tokenizer is committed, but
# a user may point at another folder.
BUILT_BY = {
    "corpus": "python -m moe_lib corpus",
    "tokenizer": "python -m moe_lib tokenizer",
    "sources": "python -m moe_lib datasets fetch",
}


class MissingInputError(FileNotFoundError):
    """An input file of a command is missing; the message names the command that builds it."""


def require(path: Path, what: str, kind: str) -> Path:
    """Return ``path`` if it is a file (or folder); raise :class:`MissingInputError` saying
    which command builds ``kind`` (a key of :data:`BUILT_BY`) otherwise.

    ``what`` is what the file is, in words ("the corpus's train split").
    """
    path = Path(path)
    if path.exists():
        return path
    return_to = f"`{BUILT_BY[kind]}`"
    everything = "" if kind == "sources" else " (or `python -m moe_lib build`, which builds every input of the site)"
    raise MissingInputError(f"{path}: {what} is missing; build it with {return_to}{everything}")


def require_corpus(folder: Path, splits: tuple[str, ...] = ("train", "validation")) -> Path:
    """Return the corpus folder if every ``split``.jsonl is there (see :func:`require`)."""
    for split in splits:
        require(Path(folder) / f"{split}.jsonl", f"the corpus's {split} split", "corpus")
    return Path(folder)


def require_tokenizer(folder: Path) -> Path:
    """Return the tokenizer folder if its tokenizer.json is there (see :func:`require`)."""
    require(Path(folder) / "tokenizer.json", "the tokenizer", "tokenizer")
    return Path(folder)
