"""Every lab's checks bite (DESIGN.md §3): for each labs/lab*.ipynb

(a) the master, run with papermill and the FAST parameters in labs/, passes every exercise's check
    (a "✓ Exercise N.k passed" line per label) inside the notebook time budget;
(b) its student version (``labkit.assign.make_student``), run with errors allowed, fails in every check
    cell with NotImplementedError or AssertionError and prints no pass line;
(c) wrong answers from tests/labs/wrong_<lab prefix>.py (e.g. wrong_lab00.py for lab00_memory.ipynb) fail
    their checks with AssertionError while the exercises without a wrong answer still pass.

The wrong-answer module defines ``WRONG = {"N.k": code}``: ``code`` replaces the exercise's first solution
region (``labkit.assign.substitute``; a list gives one entry per region, ``None`` keeps one). It may also
define ``WRONG_VALUES = {"N.k": "name = wrong value"}``, which replaces the exercise's ``# SOLUTION`` value
line instead. Each dict is one notebook run with all its wrong answers at once, so they must not depend
on each other; ``DEPENDENT = {"N.k", ...}`` lists exercises allowed to fail because they build on a wrongly
answered one.

Executed copies land in tests/_executed/ (the master where the book build looks for it, the others in
labs_student/ and labs_wrong/).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest
from nbrun import EXECUTED, FAST_BUDGET_S, FAST_PARAMS, ROOT, execute

from labkit import assign, grade, notebook

LABS = sorted((ROOT / "labs").glob("lab*.ipynb"))
IDS = [p.stem for p in LABS]
STUB_ERRORS = {"NotImplementedError", "AssertionError"}
pytestmark = pytest.mark.skipif(not LABS, reason="no labs/lab*.ipynb yet")


def _labs():
    return pytest.mark.parametrize("lab", LABS or [None], ids=IDS or ["no-labs"])


def wrong_module(lab: Path):
    """The tests/labs/wrong_<prefix>.py module of ``lab`` (prefix: the name up to the first "_"), or None."""
    path = Path(__file__).with_name(f"wrong_{lab.stem.split('_')[0]}.py")
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"_wrong_{lab.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wrong_runs():
    """(lab, dict name) for every wrong-answer dict of every lab."""
    runs = []
    for lab in LABS:
        module = wrong_module(lab)
        for name in ("WRONG", "WRONG_VALUES"):
            if module is not None and getattr(module, name, None):
                runs.append(pytest.param(lab, name, id=f"{lab.stem}-{name}"))
    return runs or [pytest.param(None, None, id="no-wrong-answers",
                                 marks=pytest.mark.skip(reason="no tests/labs/wrong_*.py for any lab"))]


@functools.cache
def master_run(lab: Path):
    """Execute the master with papermill (FAST, cwd labs/) once per worker: (executed notebook, seconds)."""
    out, seconds = execute(lab)
    return notebook.read(out), seconds


def run_with_errors(nb, lab: Path, out: Path) -> grade.Execution:
    """Execute ``nb`` like papermill would (FAST parameters injected, cwd labs/) but go on after errors."""
    nb = grade.with_parameters(nb, FAST_PARAMS)
    run = grade.execute(nb, lab.parent, cell_timeout=2 * FAST_BUDGET_S, timeout=4 * FAST_BUDGET_S)
    out.parent.mkdir(parents=True, exist_ok=True)
    notebook.write(run.nb, out)
    return run


def check_errors(nb) -> dict[str, list[tuple[int, str | None]]]:
    """label -> [(cell index, exception name or None)] for every check cell of executed ``nb``."""
    return {label: [(i, grade.cell_error(nb.cells[i])) for i in cells]
            for label, cells in assign.check_cells(nb).items()}


def describe(nb, index: int) -> str:
    """The error of executed cell ``index`` as 'cell i: Name: message', and the nearest error before it."""
    def one(i):
        error = next(o for o in nb.cells[i].outputs if o.output_type == "error")
        message = (error.evalue.strip() or " ").splitlines()[0]
        return f"cell {i}: {error.ename}: {message}"

    text = one(index) if grade.cell_error(nb.cells[index]) else f"cell {index}: no error"
    earlier = [i for i in range(index) if nb.cells[i].cell_type == "code" and grade.cell_error(nb.cells[i])]
    return text + (f" (the error before it: {one(earlier[-1])})" if earlier else "")


@_labs()
def test_master_is_a_well_formed_lab(lab):  # static: no kernel, so not marked `notebook`
    nb = notebook.read(lab)
    labels = assign.exercises(nb)
    assert labels, f"{lab.name} has no `## Exercise N.k — …` headings"
    student = assign.make_student(nb, lab.name)  # raises on a region without END, a missing check, ...
    assert notebook.problems(student) == [], f"the student version of {lab.name} breaks the notebook contract"
    leaks = [i for i, c in enumerate(student.cells) if "SOLUTION" in c.source]
    assert not leaks, f"solution markers left in the student version of {lab.name}, cells {leaks}"


@pytest.mark.notebook
@_labs()
def test_master_passes_every_check(lab):
    nb, seconds = master_run(lab)
    labels = assign.exercises(nb)
    missing = [label for label in labels if label not in grade.passed_labels(nb)]
    assert not missing, f"{lab.name}: no '✓ Exercise N.k passed' line for {missing}"
    assert seconds <= 2 * FAST_BUDGET_S, (
        f"{lab.name} took {seconds:.0f} s with FAST=True; the budget is {FAST_BUDGET_S:.0f} s "
        "(fails past 2x)")


@pytest.mark.notebook
@_labs()
def test_student_version_fails_every_check(lab):
    student = assign.make_student(notebook.read(lab), lab.name)
    run = run_with_errors(student, lab, EXECUTED / "labs_student" / lab.name)
    assert not run.total_timeout_in and run.died_in is None and not run.failure, run.notes()
    passed = grade.passed_labels(run.nb)
    assert not passed, f"the student version of {lab.name} passes {sorted(passed)} without any answer"
    bad = [describe(run.nb, i) for cells in check_errors(run.nb).values() for i, e in cells
           if e not in STUB_ERRORS]
    assert not bad, (f"{lab.name} student version: every check cell must fail with NotImplementedError or "
                     f"AssertionError; these do not: {'; '.join(bad)}")


@pytest.mark.notebook
@pytest.mark.parametrize("lab, which", _wrong_runs())
def test_wrong_answers_fail_their_checks(lab, which):
    module = wrong_module(lab)
    master = notebook.read(lab)
    answers = getattr(module, which)
    if which == "WRONG_VALUES":  # replace the `name = value  # SOLUTION` line of each exercise
        lab_info = assign.parse(master, lab.name)
        values = {}
        for label, code in answers.items():
            regions = [r for r in lab_info.regions if r.label == label]
            lines = [k for k, r in enumerate(regions) if r.kind == "line"]
            assert lines, f"{which}[{label!r}]: exercise {label} of {lab.name} has no `# SOLUTION` line"
            values[label] = [code if k == lines[0] else None for k in range(len(regions))]
        answers = values
    nb = assign.substitute(master, answers, lab.name)
    run = run_with_errors(nb, lab, EXECUTED / "labs_wrong" / f"{lab.stem}.{which}.ipynb")
    assert not run.total_timeout_in and run.died_in is None and not run.failure, run.notes()
    passed, errors = grade.passed_labels(run.nb), check_errors(run.nb)
    for label in answers:
        assert label not in passed, f"{lab.name}: the wrong answer {which}[{label!r}] passes its check"
        kinds = [e for _, e in errors[label]]
        assert "AssertionError" in kinds, (
            f"{lab.name}: the wrong answer {which}[{label!r}] should make its check raise AssertionError: "
            + "; ".join(describe(run.nb, i) for i, _ in errors[label]))
    allowed = set(answers) | set(getattr(module, "DEPENDENT", ()))
    lost = [label for label in assign.exercises(master) if label not in allowed and label not in passed]
    assert not lost, f"{lab.name}: the wrong answers {which} also broke the checks of {lost}"
