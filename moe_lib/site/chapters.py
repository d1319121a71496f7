"""The site's pages as the build sees them: which cells compute data, run without rendering.

A chapter's data come from its cell tagged ``parameters``, the shared ``setup`` cell and
every cell labelled ``data`` or ``data-...`` (the pattern of ``chapters/README.md``; an
include that computes data labels its cell ``data-<name>``, since labels are unique on a page). Running those cells
in-process computes exactly what the chapter will read from the cache, so
``python -m moe_lib build`` fills the cache and ``quarto render`` only reads it.
"""

from __future__ import annotations

import re
from pathlib import Path

from moe_lib.models.registry import PROJECT_ROOT

CELL = re.compile(r"^```\{python\}[^\n]*\n(.*?)^```\s*$", re.S | re.M)
INCLUDE = re.compile(r"\{\{<\s*include\s+(\S+)\s*>\}\}")
LABEL = re.compile(r"^#\|\s*label:\s*(\S+)\s*$", re.M)
TAGS = re.compile(r"^#\|\s*tags:\s*\[([^\]]*)\]", re.M)


def chapter_files() -> list[Path]:
    """Return the site's pages whose data the build computes: index.qmd, then chapters/*.qmd."""
    return [PROJECT_ROOT / "index.qmd", *sorted((PROJECT_ROOT / "chapters").glob("*.qmd"))]


def expand_includes(text: str, path: Path) -> str:
    """Return ``text`` with every ``{{< include >}}`` shortcode replaced by the file (recursively).

    A path starting with ``/`` is relative to the project root, as in Quarto, otherwise
    to ``path``'s folder.
    """

    def replace(match: re.Match) -> str:
        target = match.group(1)
        file = PROJECT_ROOT / target.lstrip("/") if target.startswith("/") else Path(path).parent / target
        if not file.is_file():
            raise FileNotFoundError(f"{path}: include {target!r} not found at {file}")
        return expand_includes(file.read_text(encoding="utf-8"), file)

    return INCLUDE.sub(replace, text)


def data_cells(path: Path) -> list[str]:
    """Return the sources of a chapter's cells that compute data, in order.

    Those are the cell tagged ``parameters``, the ``setup`` cell (from the shared include)
    and every cell labelled ``data`` or ``data-<name>``: the chapter pattern of
    ``chapters/README.md``.
    """
    chosen = []
    for match in CELL.finditer(expand_includes(path.read_text(encoding="utf-8"), path)):
        source = match.group(1)
        label = LABEL.search(source)
        tags = TAGS.search(source)
        data = label and (label.group(1) in ("setup", "data") or label.group(1).startswith("data-"))
        if data or (tags and "parameters" in tags.group(1)):
            chosen.append(source)
    return chosen


def run_chapter_data(path: Path, parameters: dict) -> None:
    """Execute a chapter's data cells in a fresh namespace, ``parameters`` overriding its own."""
    namespace: dict = {"__name__": f"chapter_data_{path.stem}"}
    for source in data_cells(path):
        exec(compile(source, f"{path}:data", "exec"), namespace)  # noqa: S102  our own chapters
        if re.search(r"tags:\s*\[[^\]]*parameters", source):
            namespace.update(parameters)
