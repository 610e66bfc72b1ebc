"""``python -m labkit assign`` and ``python -m labkit grade`` on a tiny master lab.

tests/fixtures/mini_lab.ipynb keeps the notebook contract (title, stamped setup, parameters, environment)
and defines its three checks inline, so each kernel run costs only the labkit import. All grading cases
run in one ``grade`` call (module fixture); the other tests need no kernel.
"""

from __future__ import annotations

import ast
import copy
import csv
import json
import os
import time
from pathlib import Path

import nbformat
import pytest

from labkit import assign, check, grade, notebook
from labkit.__main__ import main

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mini_lab.ipynb"
LABELS = ["1.1", "1.2", "1.3"]


@pytest.fixture
def master():
    return notebook.read(FIXTURE)


def cell_index(nb, source: str) -> int:
    """Index of the code cell whose whole source is ``source``."""
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip() == source)


def code_of(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


# ------------------------------------------------------------------------------------------------ assign


def test_fixture_is_a_realistic_lab(master):
    assert notebook.problems(master) == []
    assert assign.exercises(master) == LABELS
    lab = assign.parse(master, "mini_lab")
    assert {r.label for r in lab.regions} == set(LABELS)
    assert sorted(lab.checks) == LABELS


def test_student_version_stubs_solutions_and_drops_instructor_cells(master):
    before = copy.deepcopy(master)
    student = assign.make_student(master, "mini_lab")
    assert master == before, "make_student must not modify the master"
    code = code_of(student)
    assert 'def double(x):\n    raise NotImplementedError("Exercise 1.1")' in code
    assert "capacity = ...\n" in code + "\n"
    assert '    for x in xs:\n        raise NotImplementedError("Exercise 1.3")\n    return total' in code
    for gone in ("SOLUTION", "return 2 * x", "3 * 4", "total += x * x", "double(21)"):
        assert gone not in code
    text = "\n".join(c.source for c in student.cells)
    assert "Instructor notes" not in text
    assert not any("instructor" in c.metadata.get("tags", []) for c in student.cells)
    assert len(student.cells) == len(master.cells) - 2
    # everything else kept: the header (contract holds), the exercises, the check cells
    assert notebook.problems(student) == []
    assert assign.exercises(student) == LABELS
    assert sorted(assign.check_cells(student)) == LABELS
    for cell in student.cells:
        if cell.cell_type == "code":
            ast.parse("\n".join(line.split("%")[0] + "pass" if line.lstrip().startswith("%") else line
                                for line in cell.source.splitlines()))


def test_solution_lines_and_tuple_targets():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("### Exercise 2.1 — values"),
        nbformat.v4.new_code_cell("a = 1  # SOLUTION\nif True:\n    b, c = 2, 3  # SOLUTION\n"
                                  "d: int = 4  # SOLUTION"),
        nbformat.v4.new_code_cell("check.ex_2_1(a, b, c, d)"),
    ])
    student = assign.make_student(nb)
    assert student.cells[1].source == "a = ...\nif True:\n    b, c = ..., ...\nd: int = ..."


def test_substitute_replaces_only_the_named_exercise(master):
    wrong = assign.substitute(master, {"1.3": "total += x", "1.2": "capacity = 3 + 4"})
    code = code_of(wrong)
    assert "    for x in xs:\n        total += x\n    return total" in code
    assert "capacity = 3 + 4" in code and "3 * 4" not in code
    assert "return 2 * x" in code  # 1.1 untouched
    with pytest.raises(ValueError, match="no exercise 9.9"):
        assign.substitute(master, {"9.9": "pass"})


def _break(master, how: str):
    nb = copy.deepcopy(master)
    if how == "no solution region":
        nb.cells[cell_index(nb, "capacity = 3 * 4  # SOLUTION")].source = "capacity = 12"
    elif how == "no check cell":
        del nb.cells[cell_index(nb, "ex_1_3(sum_of_squares)")]
    elif how == "BEGIN without END":
        i = cell_index(nb, "def double(x):\n    # BEGIN SOLUTION\n    return 2 * x\n    # END SOLUTION")
        nb.cells[i].source = "def double(x):\n    # BEGIN SOLUTION\n    return 2 * x"
    elif how == "END without BEGIN":
        i = cell_index(nb, "def double(x):\n    # BEGIN SOLUTION\n    return 2 * x\n    # END SOLUTION")
        nb.cells[i].source = "def double(x):\n    return 2 * x\n    # END SOLUTION"
    elif how == "unknown check":
        nb.cells.append(nbformat.v4.new_code_cell("ex_1_4(double)"))
    return nb


@pytest.mark.parametrize("how, label, message", [
    ("no solution region", "1.2", "no solution region"),
    ("no check cell", "1.3", "no check cell"),
    ("BEGIN without END", "1.1", "without `# END SOLUTION`"),
    ("END without BEGIN", "1.1", "without `# BEGIN SOLUTION`"),
    ("unknown check", "1.4", "no `## Exercise 1.4"),
])
def test_malformed_master_is_refused(master, tmp_path, capsys, how, label, message):
    with pytest.raises(ValueError, match=message) as err:
        assign.make_student(_break(master, how), "lab42_broken.ipynb")
    assert "lab42_broken.ipynb" in str(err.value) and label in str(err.value)
    path = tmp_path / "lab42_broken.ipynb"
    notebook.write(_break(master, how), path)
    assert main(["assign", str(path), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / path.name).exists()


def test_assign_cli_writes_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["assign", str(FIXTURE), "--out", str(out)]) == 0
    written = out / FIXTURE.name
    assert "raise NotImplementedError" in written.read_text()
    written.write_text("my work")
    assert main(["assign", str(FIXTURE), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert written.read_text() == "my work", "nothing may be overwritten without --force"
    assert main(["assign", str(FIXTURE), "--out", str(out), "--force"]) == 0
    assert notebook.problems(notebook.read(written)) == []


def test_assign_cli_takes_folders_and_protects_the_masters(tmp_path, capsys):
    labs = tmp_path / "labs"
    labs.mkdir()
    (labs / "lab07_mini.ipynb").write_bytes(FIXTURE.read_bytes())
    (labs / "scratch.ipynb").write_text("not a lab, not even JSON")
    assert main(["assign", str(labs), "--out", str(tmp_path / "student")]) == 0
    assert [p.name for p in (tmp_path / "student").iterdir()] == ["lab07_mini.ipynb"]
    assert main(["assign", str(labs), "--out", str(labs), "--force"]) == 2
    assert "folder of the master" in capsys.readouterr().err


@pytest.mark.parametrize("name, content, message", [
    ("lab_missing.ipynb", None, "no such lab"),
    ("lab_bad.ipynb", '{"cells": [', "not a valid notebook"),
    ("lab_list.ipynb", "[1, 2]", "not a valid notebook"),
    ("lab.txt", "hello", "not a notebook"),
])
def test_assign_cli_reports_bad_input(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    assert main(["assign", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and name in err


# ------------------------------------------------------------------------------------------------- grade


def _submissions(master, folder: Path) -> dict[str, Path]:
    """One submission per case, written into ``folder``; returns case -> path."""
    subs = {}

    def save(name, nb):
        subs[name] = folder / f"{name}.ipynb"
        notebook.write(nb, subs[name])

    save("master", master)
    save("student", assign.make_student(master))
    save("wrong", assign.substitute(master, {"1.2": "capacity = 3 + 4"}))
    loop = copy.deepcopy(master)  # 1.2's cell never ends: interrupted, 1.2 lost, the run goes on
    loop.cells[cell_index(loop, "capacity = 3 * 4  # SOLUTION")].source = "while True:\n    pass"
    save("loop", loop)
    dies = copy.deepcopy(master)  # the kernel dies after 1.1 passed
    exit_cell = nbformat.v4.new_code_cell("import os\nos._exit(1)")
    dies.cells.insert(cell_index(dies, "ex_1_1(double)") + 1, exit_cell)
    save("dies", dies)
    forged = copy.deepcopy(master)  # 1.1's check deleted, its pass line and a made-up receipt printed
    forged.cells[cell_index(forged, "ex_1_1(double)")].source = (
        'print("✓ Exercise 1.1 passed: double(x) returns 2 x")\n'
        'print("[labkit-receipt 1.1 0123456789abcdef]")\n'
        'print(labkit.check.receipt("1.1", "a guessed secret"))')
    save("forged", forged)
    (folder / "broken.ipynb").write_text('{"cells": [')
    subs["broken"] = folder / "broken.ipynb"
    return subs


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade every case in one CLI call; returns (rows by case, report text, folder).

    Under pytest-xdist the workers share one run (file lock in the session's common temp folder)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / "labkit-grading"
    out, md, kept = folder / "out" / "grades.csv", folder / "out" / "grades.md", folder / "executed"
    with FileLock(str(folder) + ".lock"):
        if not out.exists():
            folder.mkdir(exist_ok=True)
            subs = _submissions(notebook.read(FIXTURE), folder)
            code = main(["grade", *map(str, subs.values()), "--master", str(FIXTURE), "--out", str(out),
                         "--report", str(md), "--cell-timeout", "3", "--timeout", "120",
                         "--keep-executed", str(kept), "--jobs", "2"])
            assert code == 0
    with open(out, newline="", encoding="utf-8") as f:
        rows = {Path(row["submission"]).stem: row for row in csv.DictReader(f)}
    return rows, md.read_text(encoding="utf-8"), folder


def scores(row) -> list[int]:
    return [int(row[label]) for label in LABELS]


def test_grades_table(graded):
    rows, _, folder = graded
    assert set(rows) == {"master", "student", "wrong", "loop", "dies", "forged", "broken"}
    with open(folder / "out" / "grades.csv", encoding="utf-8") as f:
        assert f.readline().strip() == "submission,1.1,1.2,1.3,total,max,status"
    assert all(row["max"] == "3" and int(row["total"]) == sum(scores(row)) for row in rows.values())


def test_master_scores_full_marks(graded):
    row = graded[0]["master"]
    assert scores(row) == [1, 1, 1] and row["status"] == "ok"


def test_student_version_scores_zero(graded):
    row = graded[0]["student"]
    assert scores(row) == [0, 0, 0]
    assert "1.1: NotImplementedError" in row["status"] and "1.2: AssertionError" in row["status"]


def test_one_wrong_answer_loses_exactly_that_exercise(graded):
    row = graded[0]["wrong"]
    assert scores(row) == [1, 0, 1] and row["status"] == "1.2: AssertionError"


def test_endless_cell_is_interrupted_and_the_rest_still_graded(graded):
    row = graded[0]["loop"]
    assert scores(row) == [1, 0, 1]
    assert "timed out in cell 10" in row["status"]


def test_dead_kernel_keeps_what_passed_before(graded):
    row = graded[0]["dies"]
    assert scores(row) == [1, 0, 0]
    assert "kernel died in cell 9" in row["status"]


def test_deleted_check_and_hand_printed_pass_score_zero(graded):
    row = graded[0]["forged"]
    assert scores(row) == [0, 1, 1]
    assert "1.1: no check cell" in row["status"]


def test_malformed_submission_scores_zero_with_a_note(graded):
    row = graded[0]["broken"]
    assert scores(row) == [0, 0, 0] and "not gradable" in row["status"]


def test_report_and_kept_notebooks(graded):
    rows, md, folder = graded
    assert "| 1.1 | 4 / 7 | 57 % |" in md  # master, wrong, loop, dies
    assert "| 1.2 | 2 / 7 | 29 % |" in md  # master, forged
    for name in rows:
        assert f"{name}.ipynb`" in md
    executed = notebook.read(folder / "executed" / "master.ipynb")
    printed = "".join(grade.output_text(c) for c in executed.cells if c.cell_type == "code")
    assert "✓ Exercise 1.3 passed" in printed
    assert not (folder / "executed" / "broken.ipynb").exists()


def test_grade_refuses_to_overwrite_before_running_anything(tmp_path, capsys):
    out = tmp_path / "grades.csv"
    out.write_text("keep me")
    assert main(["grade", str(FIXTURE), "--master", str(FIXTURE), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(["grade", str(tmp_path / "nope.ipynb"), "--master", str(FIXTURE), "--out", str(out)]) == 2
    assert main(["grade", str(FIXTURE), "--master", str(FIXTURE), "--out", str(FIXTURE), "--force"]) == 2
    assert "one of the inputs" in capsys.readouterr().err


def test_only_the_secret_makes_a_receipt():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")])
    text = check.receipt("1.1", "secret") + "\n✓ Exercise 1.2 passed\n"
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    assert grade.passed_labels(nb, "secret") == {"1.1"}
    assert grade.passed_labels(nb, "another") == set()
    assert grade.passed_labels(nb) == {"1.2"}


def test_total_time_limit_kills_a_kernel_that_ignores_interrupts():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("print('started')"),
        nbformat.v4.new_code_cell("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                  "while True:\n    pass"),
        nbformat.v4.new_code_cell("print('never')"),
    ])
    start = time.perf_counter()
    run = grade.execute(nb, cell_timeout=1, timeout=4)
    assert time.perf_counter() - start < 20
    assert run.total_timeout_in == 1 and 1 in run.timed_out_cells
    assert "total time limit (4 s) reached in cell 1" in "; ".join(run.notes(1, 4))
    assert "never" not in grade.output_text(nb.cells[2])


def test_with_parameters_injects_after_the_parameters_cell(master):
    fast = grade.with_parameters(master, {"FAST": True})
    assert fast.cells[3].source.endswith("FAST = True")
    assert fast.cells[3].metadata["tags"] == ["injected-parameters"]
    assert grade.header_length(fast) == 5 and grade.header_length(master) == 4
    assert json.dumps(master) != json.dumps(fast)
