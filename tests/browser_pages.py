"""An executed page as HTML, served on 127.0.0.1 and measured in headless Chromium.

Quarto cannot be installed on these machines, so the page is rebuilt from its executed
notebook with nbconvert, in a frame with the site's measures (moe_lib.plots): a text column
as wide as Quarto's at a 1280 px window, wide figures across the column and the right
margin (``column: page-right``), images that shrink to their column as Quarto's
``img-fluid`` does. What the reader sees is then measured: every table's width against its
column, every figure's shown width against its pixels, and a screenshot of the whole page.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import threading
from pathlib import Path

import nbformat
from page_checks import is_wide

WINDOW_WIDTH = 1280
SIDEBAR_WIDTH = 250  # Quarto's docked sidebar
COLUMN_WIDTH = 700  # Quarto's body column at a 1280 px window, docked sidebar and margin TOC
WIDE_WIDTH = 930  # the body column and the right margin
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", f"--window-size={WINDOW_WIDTH},900"]

STYLE = f"""
body {{ margin: 0; font-family: system-ui, sans-serif; font-size: 16px; line-height: 1.5; }}
main {{ margin-left: {SIDEBAR_WIDTH}px; padding-top: 1em; }}
section {{ width: {COLUMN_WIDTH}px; margin-bottom: 2em; }}
section.column-page-right {{ width: {WIDE_WIDTH}px; }}
img {{ max-width: 100%; height: auto; }}
.output_subarea, .output_area, .output, .output_wrapper {{ padding: 0; margin: 0; }}
"""


def chromium() -> str | None:
    """Return the Chromium binary, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def browser_missing() -> str | None:
    """Return why the browser tests cannot run here, or None when they can."""
    if chromium() is None or shutil.which("chromedriver") is None:
        return "headless Chromium is not installed (apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def cell_html(cell) -> str:
    """Return one cell's outputs as HTML, by nbconvert's basic template, without its code."""
    from nbconvert import HTMLExporter

    single = nbformat.v4.new_notebook()
    # the site renders with `warning: false`: warnings on stderr never reach the page
    shown = [o for o in cell.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    single.cells.append(nbformat.from_dict({**cell, "outputs": shown}))
    exporter = HTMLExporter(template_name="basic", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(single)
    return body


def page_html(notebook, title: str) -> str:
    """Return a page of the notebook's labelled figures and tables, each in a section as
    wide as the site shows it."""
    sections = []
    for cell in notebook.cells:
        options = cell.metadata.get("quarto", {})
        label = str(options.get("label", ""))
        if not label.startswith(("fig-", "tbl-")):
            continue
        column = "column-page-right" if is_wide(options) else "column-body"
        sections.append(f'<section id="{label}" class="{column}">\n{cell_html(cell)}\n</section>')
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{STYLE}</style></head>\n<body><main>\n<h1>{title}</h1>\n" + "\n".join(sections)
            + "\n</main></body></html>\n")


@contextlib.contextmanager
def serve(folder: Path):
    """Serve ``folder`` on 127.0.0.1 (a free port) while the block runs; yield the base URL."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output to the test's own lines
        pass


MEASURE = """
document.querySelectorAll('details').forEach(d => d.open = true);  // folded tables count too
const found = [];
for (const section of document.querySelectorAll('section')) {
  const column = section.getBoundingClientRect();
  for (const table of section.querySelectorAll('table')) {
    const box = table.getBoundingClientRect();
    found.push({kind: 'table', label: section.id, width: box.width, right: box.right,
                column_right: column.right, column_width: column.width});
  }
  for (const img of section.querySelectorAll('img')) {
    found.push({kind: 'figure', label: section.id, natural_width: img.naturalWidth,
                shown_width: img.getBoundingClientRect().width, column_width: column.width});
  }
}
return found;
"""


def measure(url: str, screenshot: Path) -> list[dict]:
    """Open ``url`` in headless Chromium at a 1280 px window, save a screenshot of the whole
    page to ``screenshot`` and return the measures of every table and figure."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = screenshot.parent / f"{screenshot.stem}-profile"
    options.add_argument(f"--user-data-dir={profile}")
    # the driver Debian installs, so that selenium never looks for one on the network
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(url)
        found = driver.execute_script(MEASURE)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(WINDOW_WIDTH, min(height + 100, 16000))
        driver.save_screenshot(str(screenshot))
        return found
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def layout_problems(found: list[dict]) -> list[str]:
    """Return, from :func:`measure`'s list, every table wider than its column and every figure
    not shown at its own pixel width (scaled down, its text shrinks below what it was drawn at)."""
    problems = []
    for item in found:
        if item["kind"] == "table" and item["right"] > item["column_right"] + 0.5:
            problems.append(f"{item['label']}: table {item['width']:.0f} px wide in a "
                            f"{item['column_width']:.0f} px column")
        if item["kind"] == "figure" and item["shown_width"] != item["natural_width"]:
            problems.append(f"{item['label']}: a {item['natural_width']} px figure shown at "
                            f"{item['shown_width']:.0f} px")
    return problems


def screenshot_size(path: Path) -> tuple[int, int]:
    """Return a PNG's (width, height) from its header."""
    raw = Path(path).read_bytes()[:24]
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")

