"""The notebook contract, as code: the stamped setup cell, the parameters cell, stripped outputs.

Every notebook in book/ and labs/ starts::

    [0] markdown  title, promise, what you build, time to run (FAST / full)
    [1] code      SETUP_CELL (tags: setup, hide-input)   <- stamped by `python -m labkit stamp`
    [2] code      FAST = False / SEED = 0 / BACKEND = "auto"   (tags: parameters)
    [3] code      ENV_LINE, then the sizes derived from FAST

The parameters cell holds only the knobs: papermill injects its overrides *after* that cell, so anything
derived from FAST must be computed in a later cell (cell 3) to see the injected value.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from labkit import __version__

REPO_URL = "https://github.com/engram-book/engram"
RELEASE_TAG = f"v{__version__}"
INSTALL_SPEC = f"labkit @ git+{REPO_URL}@{RELEASE_TAG}"

SETUP_CELL = f'''# Engram setup (stamped by `python -m labkit stamp`; do not edit by hand).
# On Colab or a fresh machine this installs labkit; torch/numpy are never pinned (Colab ships them).
try:
    import labkit
except ImportError:
    %pip install -q "{INSTALL_SPEC}"
    import labkit'''
SETUP_TAGS = ["setup", "hide-input"]
PARAMETER_NAMES = ("FAST", "SEED", "BACKEND")
ENV_LINE = "ENV = labkit.setup(seed=SEED, backend=BACKEND)"
VOLATILE_NOTEBOOK_METADATA = ("widgets", "papermill", "execution", "varInspector", "toc")


def _cells(nb) -> list:
    return nb["cells"]


def stamp(nb) -> bool:
    """Write the setup cell of ``nb`` (an nbformat notebook) from the template. Returns True if changed."""
    cells = _cells(nb)
    if len(cells) < 2 or cells[1].cell_type != "code":
        raise ValueError("notebook must have a markdown title cell followed by a code setup cell")
    cell = cells[1]
    changed = cell.source != SETUP_CELL or sorted(cell.metadata.get("tags", [])) != sorted(SETUP_TAGS)
    cell.source = SETUP_CELL
    cell.metadata["tags"] = list(SETUP_TAGS)
    return changed


def strip(nb) -> bool:
    """Remove outputs, execution counts and volatile metadata in place. Returns True if anything changed."""
    changed = False
    for cell in _cells(nb):
        if cell.cell_type == "code":
            if cell.get("outputs") or cell.get("execution_count") is not None:
                changed = True
            cell["outputs"] = []
            cell["execution_count"] = None
        for key in ("execution", "papermill", "collapsed", "scrolled", "ExecuteTime"):
            if key in cell.metadata:
                del cell.metadata[key]
                changed = True
        if "id" in cell and cell.get("id", "").startswith("papermill"):
            changed = True
    for key in VOLATILE_NOTEBOOK_METADATA:
        if key in nb.metadata:
            del nb.metadata[key]
            changed = True
    return changed


def problems(nb) -> list[str]:
    """Every way ``nb`` breaks the notebook contract (empty list = compliant)."""
    found = []
    cells = _cells(nb)
    if len(cells) < 4:
        return [f"needs at least 4 cells (title, setup, parameters, environment), has {len(cells)}"]
    if cells[0].cell_type != "markdown" or not cells[0].source.lstrip().startswith("# "):
        found.append("cell 0 must be a markdown cell starting with '# <title>'")
    elif "FAST" not in cells[0].source:
        found.append("cell 0 must state the time to run (FAST / full)")
    if cells[1].cell_type != "code" or cells[1].source != SETUP_CELL:
        found.append("cell 1 drifted from the setup template: run `python -m labkit stamp`")
    elif sorted(cells[1].metadata.get("tags", [])) != sorted(SETUP_TAGS):
        found.append(f"cell 1 must carry the tags {SETUP_TAGS}")
    params = cells[2]
    if params.cell_type != "code" or "parameters" not in params.metadata.get("tags", []):
        found.append("cell 2 must be the code cell tagged 'parameters'")
    else:
        assigned = [line.split("=")[0].strip() for line in params.source.splitlines()
                    if "=" in line and not line.lstrip().startswith("#")]
        if tuple(assigned) != PARAMETER_NAMES:
            found.append(f"parameters cell must assign exactly {PARAMETER_NAMES} (sizes go in cell 3), got {assigned}")
    if cells[3].cell_type != "code" or not cells[3].source.startswith(ENV_LINE):
        found.append(f"cell 3 must start with `{ENV_LINE}`")
    for i, cell in enumerate(cells):
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
            found.append(f"cell {i} has committed outputs: run `python -m labkit strip`")
            break
    for key in VOLATILE_NOTEBOOK_METADATA:
        if key in nb.metadata:
            found.append(f"notebook metadata holds volatile key {key!r}: run `python -m labkit strip`")
    return found


def read(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook not found: {path}")
    try:
        return nbformat.read(path, as_version=4)
    except (json.JSONDecodeError, nbformat.reader.NotJSONError) as err:
        raise ValueError(f"{path} is not a valid notebook: {err}") from err


def write(nb, path: str | Path) -> None:
    nbformat.write(nb, Path(path))


def notebooks(root: str | Path = ".") -> list[Path]:
    """The notebooks the contract covers: book/*.ipynb and labs/*.ipynb."""
    root = Path(root)
    return sorted([*root.glob("book/*.ipynb"), *root.glob("labs/*.ipynb")])
