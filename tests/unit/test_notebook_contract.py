"""DESIGN.md §2 as tests: stamped setup cell, parameters cell, no committed outputs."""

from __future__ import annotations

import copy

import nbformat
import pytest
from nbrun import ROOT

from labkit import notebook

NOTEBOOKS = notebook.notebooks(ROOT)


def test_there_are_notebooks():
    assert any(p.parent.name == "book" for p in NOTEBOOKS)
    assert any(p.parent.name == "labs" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[f"{p.parent.name}/{p.name}" for p in NOTEBOOKS])
def test_notebook_keeps_the_contract(path):
    assert notebook.problems(notebook.read(path)) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[f"{p.parent.name}/{p.name}" for p in NOTEBOOKS])
def test_notebook_is_in_the_toc(path):
    toc = (ROOT / "_toc.yml").read_text()
    assert str(path.relative_to(ROOT).with_suffix("")) in toc


def _valid_notebook():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Title\n\nTime to run: FAST 10 s / full 1 min."),
        nbformat.v4.new_code_cell("import labkit"),
        nbformat.v4.new_code_cell('FAST = False\nSEED = 0\nBACKEND = "auto"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(notebook.ENV_LINE + "\nN = 10 if FAST else 1000"),
    ]
    notebook.stamp(nb)
    return nb


def test_stamp_then_clean_notebook_has_no_problems():
    assert notebook.problems(_valid_notebook()) == []


def test_drifted_setup_cell_is_caught_and_restamped():
    nb = _valid_notebook()
    nb.cells[1].source = nb.cells[1].source.replace("-q", "")
    assert any("drifted" in p for p in notebook.problems(nb))
    assert notebook.stamp(nb) is True
    assert notebook.problems(nb) == []
    assert notebook.stamp(nb) is False  # idempotent


def test_committed_outputs_are_caught_and_stripped():
    nb = _valid_notebook()
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", text="hi")]
    nb.cells[3].execution_count = 3
    nb.metadata["papermill"] = {"duration": 1.0}
    found = notebook.problems(nb)
    assert any("outputs" in p for p in found) and any("papermill" in p for p in found)
    assert notebook.strip(nb) is True
    assert notebook.problems(nb) == []


def test_derived_sizes_in_the_parameters_cell_are_rejected():
    nb = _valid_notebook()
    nb.cells[2].source += "\nN = 10 if FAST else 1000"
    assert any("parameters cell" in p for p in notebook.problems(nb))


def test_missing_parameters_tag_is_rejected():
    nb = copy.deepcopy(_valid_notebook())
    nb.cells[2].metadata["tags"] = []
    assert any("parameters" in p for p in notebook.problems(nb))


def test_setup_cell_installs_the_release_and_pins_nothing_colab_ships():
    assert notebook.INSTALL_SPEC in notebook.SETUP_CELL
    for pinned in ("torch=", "numpy=", "triton="):
        assert pinned not in notebook.SETUP_CELL


def test_read_reports_missing_and_malformed(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        notebook.read(tmp_path / "nope.ipynb")
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid notebook"):
        notebook.read(bad)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[f"{p.parent.name}/{p.name}" for p in NOTEBOOKS])
def test_instructor_cells_are_hidden_from_the_book(path):
    for i, cell in enumerate(notebook.read(path).cells):
        tags = cell.metadata.get("tags", [])
        if "instructor" in tags:
            assert "remove-cell" in tags, f"cell {i} is tagged 'instructor' but not 'remove-cell'"
