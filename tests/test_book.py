"""The book builds (`jupyter-book build -W`) from the FAST-executed notebooks, and its pages render.

Runs after the notebook tests (``make test`` runs ``-m book`` second); any executed copy that is missing or
older than its source is executed here first, so this file also works alone.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from nbrun import ROOT, execute, executed_path, fresh

pytestmark = pytest.mark.book
BIN = Path(sys.executable).parent


def _hide_injected_parameters(executed: Path, target: Path) -> None:
    """Copy an executed notebook, hiding the cell papermill injected (FAST = True) from the page."""
    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    nbformat.write(nb, target)


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [entry["file"] for entry in part.get("chapters", [])]
    return files


def _source(entry: str) -> Path:
    for suffix in (".ipynb", ".md"):
        if (ROOT / f"{entry}{suffix}").exists():
            return ROOT / f"{entry}{suffix}"
    raise FileNotFoundError(f"_toc.yml names {entry!r}, which has no .ipynb or .md file")


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """Build the book into a temporary copy whose notebooks carry their FAST outputs."""
    src = tmp_path_factory.mktemp("book")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copy(ROOT / "_toc.yml", src / "_toc.yml")
    shutil.copytree(ROOT / "book", src / "book", ignore=shutil.ignore_patterns("*.ipynb", "_build"))
    for entry in _toc_files():
        source = _source(entry)
        target = src / source.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix == ".ipynb":
            if not fresh(source):
                execute(source)
            _hide_injected_parameters(executed_path(source), target)
        else:
            shutil.copy(source, target)
    result = subprocess.run([str(BIN / "jupyter-book"), "build", str(src), "-W", "-n", "--keep-going"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"jupyter-book build failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    return src / "_build" / "html"


def test_every_toc_entry_becomes_a_page(site):
    for entry in _toc_files():
        assert (site / f"{entry}.html").is_file(), f"no page for {entry}"


def test_chapter_page_embeds_plotly_math_and_launch_buttons(site):
    html = (site / "book" / "00_prologue.html").read_text()
    assert "Plotly.newPlot" in html, "no plotly figure in the chapter page"
    assert "mathjax/tex-chtml.js" in html, "MathJax is not served from the site itself"
    assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert "colab.research.google.com" in html, "no Colab launch button"
    assert re.search(r"\\\[|\$\$|math notranslate", html), "no math in the chapter page"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_chapter_renders_plotly_and_math_in_headless_chromium(site, tmp_path):
    page = site / "book" / "00_prologue.html"
    result = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files",
         "--virtual-time-budget=20000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    dom = result.stdout
    assert "<html" in dom, f"Chromium printed no DOM:\n{result.stderr[-2000:]}"
    # plotly draws its SVG only when plotly.js ran; MathJax replaces TeX by <mjx-container> only when it ran.
    assert "main-svg" in dom, "plotly.js did not draw any figure"
    assert "<mjx-container" in dom, "MathJax did not typeset the math"
