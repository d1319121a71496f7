"""Execute a chapter's Python cells in a Jupyter kernel, as ``quarto render`` would, for tests.

A test harness, not a Quarto substitute: it reads the ``{python}`` cells of a ``.qmd``
(after expanding ``{{< include >}}`` shortcodes as the build does), keeps their ``#|``
options, injects ``-P``-style parameters after the cell tagged ``parameters`` (as papermill does for
Quarto), runs the notebook with nbclient in the project root (``execute-dir: project``)
and evaluates every inline ```{python} expr``` in the same kernel, so the tests see what
a render would execute and fail where it would.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient

# The build reads chapters' cells with the same expressions; one definition serves both.
from moe_lib.site.chapters import CELL, PROJECT_ROOT, expand_includes  # noqa: E402

INLINE = re.compile(r"`\{python\}\s+([^`]+)`")
OPTION = re.compile(r"^#\|\s*([\w-]+)\s*:\s*(.*)$")
FIG_REF = re.compile(r"(?<![\w@])@(fig-[\w-]+)")


@dataclass
class Cell:
    """One ``{python}`` cell: its source and its ``#|`` options (YAML values)."""

    source: str
    options: dict = field(default_factory=dict)


def read_chapter(path: Path) -> str:
    """Return a chapter's text with its includes expanded."""
    path = Path(path)
    return expand_includes(path.read_text(encoding="utf-8"), path)


def cell_options(source: str) -> dict:
    """Return the ``#| key: value`` options at the top of a cell, values parsed as YAML."""
    options = {}
    for line in source.splitlines():
        match = OPTION.match(line)
        if not match:
            break
        options[match.group(1)] = yaml.safe_load(match.group(2)) if match.group(2) else None
    return options


def cells(text: str) -> list[Cell]:
    """Return the ``{python}`` cells of a chapter's (expanded) text, in order."""
    return [Cell(m.group(1), cell_options(m.group(1))) for m in CELL.finditer(text)]


def inline_expressions(text: str) -> list[str]:
    """Return the expressions of every inline ```{python} expr``` in the prose."""
    prose = CELL.sub("", text)
    return [m.group(1).strip() for m in INLINE.finditer(prose)]


def figure_labels(text: str) -> list[str]:
    """Return the ``fig-`` labels of the chapter's cells."""
    return [str(c.options["label"]) for c in cells(text) if str(c.options.get("label", "")).startswith("fig-")]


def figure_references(text: str) -> list[str]:
    """Return every ``@fig-...`` cross-reference in the prose (not in code)."""
    prose = CELL.sub("", text)
    return FIG_REF.findall(prose)


def to_notebook(text: str, parameters: dict | None = None) -> nbformat.NotebookNode:
    """Return a notebook of the chapter's cells, parameters injected after the parameters cell.

    The injected cell assigns each parameter with its Python ``repr``, as papermill does
    with the YAML values Quarto passes for ``-P name:value``.
    """
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for cell in cells(text):
        tags = cell.options.get("tags") or []
        nb_cell = nbformat.v4.new_code_cell(cell.source, metadata={"tags": list(tags), "quarto": cell.options})
        notebook.cells.append(nb_cell)
        if "parameters" in tags and parameters:
            injected = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
            notebook.cells.append(nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
    if parameters and not any("parameters" in (c.metadata.get("tags") or []) for c in notebook.cells):
        raise ValueError("parameters given, but the chapter has no cell tagged parameters")
    return notebook


@dataclass
class Executed:
    """A chapter run: the executed notebook and each inline expression with its value, in
    the order of the prose (an expression used twice appears twice)."""

    notebook: nbformat.NotebookNode
    inline_values: list[tuple[str, str]]

    def outputs_of(self, label: str) -> list[dict]:
        """Return the outputs of the cell labelled ``label``."""
        for cell in self.notebook.cells:
            if cell.metadata.get("quarto", {}).get("label") == label:
                return cell.outputs
        raise KeyError(f"no cell labelled {label!r}")

    def has_image(self, label: str) -> bool:
        """Return whether the cell labelled ``label`` displayed a PNG image."""
        return any("image/png" in output.get("data", {}) for output in self.outputs_of(label))


def execute(path: Path, parameters: dict | None = None, timeout: int = 1200) -> Executed:
    """Run a chapter's cells and inline expressions in a fresh ``python3`` kernel.

    Raises nbclient's ``CellExecutionError`` (with the cell and traceback) when a cell or
    an inline expression fails.
    """
    text = read_chapter(path)
    notebook = to_notebook(text, parameters)
    expressions = inline_expressions(text)
    # One last cell evaluates every inline expression, as Quarto does after the cells.
    notebook.cells.append(nbformat.v4.new_code_cell(
        "__inline_values = [str(eval(e)) for e in " + repr(expressions) + "]\nprint(repr(__inline_values))",
        metadata={"tags": ["inline-expressions"]},
    ))
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(PROJECT_ROOT)}})
    client.execute()
    printed = "".join(o.get("text", "") for o in notebook.cells[-1].outputs if o.get("name") == "stdout")
    values = ast.literal_eval(printed) if printed.strip() else []
    return Executed(notebook, list(zip(expressions, values)))


def save_figures(executed: Executed, text: str, out_dir: Path, prefix: str = "") -> list[Path]:
    """Write the PNG of every ``fig-`` cell of an executed chapter to ``out_dir``; return the paths."""
    import base64

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for label in figure_labels(text):
        images = [o["data"]["image/png"] for o in executed.outputs_of(label) if "image/png" in o.get("data", {})]
        for index, image in enumerate(images):
            path = out_dir / f"{prefix}{label.removeprefix('fig-')}{f'-{index}' if index else ''}.png"
            path.write_bytes(base64.b64decode(image))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python tests/chapter_runner.py CHAPTER.qmd [--images DIR]``: run a chapter, report, save figures."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("chapter", type=Path)
    parser.add_argument("--images", type=Path, help="write each labelled figure's PNG here")
    parser.add_argument("--prefix", default="", help="prefix of the image file names")
    args = parser.parse_args(argv)
    executed = execute(args.chapter)
    for expression, value in executed.inline_values:
        print(f"{value:>12}  <- {expression}")
    if args.images:
        for path in save_figures(executed, read_chapter(args.chapter), args.images, args.prefix):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
