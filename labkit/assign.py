"""``python -m labkit assign``: master labs -> student versions.

A master lab marks its solutions inside code cells and introduces each exercise with a heading::

    ## Exercise 0.1 — write to a key-value memory        (markdown cell; ## or ###)

    def write(memory, key, value):
        # BEGIN SOLUTION
        memory[key] = value
        # END SOLUTION

    capacity = d // 2  # SOLUTION

    labkit.check.prologue.ex_0_1(write)                   (the check cell)

The student version replaces every ``# BEGIN SOLUTION`` … ``# END SOLUTION`` region (markers included) by
``raise NotImplementedError("Exercise 0.1")`` at the region's indentation, turns ``name = expr  # SOLUTION``
into ``name = ...``, drops instructor cells (tagged ``instructor``, or markdown starting with
``**Instructor notes**``) and strips every output. A region belongs to the nearest exercise heading above it.

Every exercise needs at least one solution region and one check cell (a call ``ex_N_k(...)``); a master
that breaks this, or a ``# BEGIN SOLUTION`` without its ``# END SOLUTION``, is refused with an error that
names the notebook and the exercise.
"""

from __future__ import annotations

import argparse
import copy
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

HEADING = re.compile(r"^#{2,3}\s+Exercise\s+(\d+\.\d+)\b", re.MULTILINE)
CHECK_CALL = re.compile(r"(?<!def )\bex_(\d+)_(\d+)\s*\(")
BEGIN = re.compile(r"^(?P<indent>[ \t]*)#+\s*BEGIN SOLUTION\b")
END = re.compile(r"^[ \t]*#+\s*END SOLUTION\b")
LINE_SOLUTION = re.compile(r"\S.*?#\s*SOLUTION\s*$")
_ASSIGNMENT = re.compile(
    r"^(?P<indent>[ \t]*)"
    r"(?P<target>[A-Za-z_][\w.]*(?:\[[^\]]*\])?(?:\s*:\s*[^=]+?)?"  # name, attr, subscript, annotation
    r"|[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)+)"  # or a tuple of names
    r"\s*=(?!=)\s*(?P<expr>.*?)\s*#\s*SOLUTION\s*$"
)
INSTRUCTOR_TAG = "instructor"
_INSTRUCTOR_MARKDOWN = re.compile(r"^\s*\*\*Instructor notes?\b", re.IGNORECASE)


@dataclass
class Region:
    """One solution region: lines ``start..end`` (inclusive) of code cell ``cell`` in the master."""

    label: str
    cell: int
    start: int
    end: int
    indent: str
    kind: str  # "block" (BEGIN/END markers) or "line" (`name = expr  # SOLUTION`)
    target: str = ""  # the assigned name(s) of a "line" region


@dataclass
class Lab:
    """What a master lab holds: its exercises (in order), solution regions and check cells."""

    exercises: list[str] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    checks: dict[str, list[int]] = field(default_factory=dict)  # label -> indices of its check cells


def is_instructor(cell) -> bool:
    """True for cells the student never sees: tagged ``instructor``, or markdown ``**Instructor notes**``."""
    if INSTRUCTOR_TAG in cell.get("metadata", {}).get("tags", []):
        return True
    return cell.cell_type == "markdown" and bool(_INSTRUCTOR_MARKDOWN.match(cell.source))


def exercises(nb) -> list[str]:
    """The exercise labels ("N.k") of ``nb``, in the order of their headings (instructor cells ignored)."""
    labels: list[str] = []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and not is_instructor(cell):
            labels.extend(label for label in HEADING.findall(cell.source) if label not in labels)
    return labels


def check_labels(source: str) -> list[str]:
    """Labels of the checks a code cell calls: ``labkit.check.x.ex_1_2(...)`` -> ["1.2"].

    Definitions (``def ex_1_2``) and commented-out calls do not count."""
    found = []
    for line in source.splitlines():
        if line.lstrip().startswith("#"):  # a commented-out call is no check
            continue
        for major, minor in CHECK_CALL.findall(line):
            label = f"{major}.{minor}"
            if label not in found:
                found.append(label)
    return found


def check_cells(nb) -> dict[str, list[int]]:
    """label -> indices of the (non-instructor) code cells that call its check."""
    checks: dict[str, list[int]] = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and not is_instructor(cell):
            for label in check_labels(cell.source):
                checks.setdefault(label, []).append(i)
    return checks


def parse(nb, name: str = "notebook") -> Lab:
    """Find exercises, solution regions and check cells of a master lab; raise ValueError if malformed."""
    lab = Lab()
    current: str | None = None
    for i, cell in enumerate(nb.cells):
        if is_instructor(cell):
            continue
        if cell.cell_type == "markdown":
            for label in HEADING.findall(cell.source):
                if label in lab.exercises:
                    raise ValueError(f"{name}: exercise {label} has two headings (second in cell {i})")
                lab.exercises.append(label)
                current = label
            continue
        if cell.cell_type != "code":
            continue
        lines = cell.source.splitlines()
        open_at: int | None = None
        for j, line in enumerate(lines):
            if BEGIN.match(line):
                if open_at is not None:
                    raise ValueError(f"{name}: cell {i} line {j + 1}: `# BEGIN SOLUTION` inside another "
                                     f"solution region (exercise {current}); close the first with "
                                     "`# END SOLUTION`")
                open_at = j
            elif END.match(line):
                if open_at is None:
                    raise ValueError(f"{name}: cell {i} line {j + 1}: `# END SOLUTION` without "
                                     f"`# BEGIN SOLUTION` (exercise {current})")
                lab.regions.append(_region(name, current, i, open_at, j, "block",
                                           BEGIN.match(lines[open_at]).group("indent")))
                open_at = None
            elif open_at is None and LINE_SOLUTION.match(line.strip()):
                match = _ASSIGNMENT.match(line)
                if not match:
                    raise ValueError(f"{name}: cell {i} line {j + 1} (exercise {current}): a `# SOLUTION` "
                                     f"line must look like `name = expr  # SOLUTION`, got {line.strip()!r}")
                lab.regions.append(_region(name, current, i, j, j, "line", match.group("indent"),
                                           match.group("target").strip()))
        if open_at is not None:
            raise ValueError(f"{name}: cell {i} line {open_at + 1}: `# BEGIN SOLUTION` without "
                             f"`# END SOLUTION` (exercise {current})")
        for label in check_labels(cell.source):
            lab.checks.setdefault(label, []).append(i)
    for label in lab.exercises:
        if not any(r.label == label for r in lab.regions):
            raise ValueError(f"{name}: exercise {label} has no solution region "
                             "(`# BEGIN SOLUTION` … `# END SOLUTION`, or `name = expr  # SOLUTION`)")
        if label not in lab.checks:
            check = f"ex_{label.replace('.', '_')}"
            raise ValueError(f"{name}: exercise {label} has no check cell "
                             f"(a code cell calling `labkit.check.<family>.{check}(...)`)")
    for label, cells in lab.checks.items():
        if label not in lab.exercises:
            check = f"ex_{label.replace('.', '_')}"
            raise ValueError(f"{name}: cell {cells[0]} calls the check {check} but there is no "
                             f"`## Exercise {label} — …` heading")
    return lab


def _region(name, label, cell, start, end, kind, indent, target="") -> Region:
    if label is None:
        raise ValueError(f"{name}: cell {cell} line {start + 1}: solution region before the first "
                         "`## Exercise N.k — …` heading")
    return Region(label=label, cell=cell, start=start, end=end, indent=indent, kind=kind, target=target)


def _rewrite(nb, regions: list[Region], replace) -> None:
    """Replace each region's lines in ``nb`` (in place) by the lines ``replace(region)`` returns (or keep)."""
    by_cell: dict[int, list[Region]] = {}
    for region in regions:
        by_cell.setdefault(region.cell, []).append(region)
    for index, cell_regions in by_cell.items():
        cell = nb.cells[index]
        lines = cell.source.splitlines()
        for region in sorted(cell_regions, key=lambda r: r.start, reverse=True):
            new = replace(region)
            if new is not None:
                lines[region.start:region.end + 1] = new
        cell.source = "\n".join(lines)


def _stub(region: Region) -> list[str]:
    if region.kind == "block":
        return [f'{region.indent}raise NotImplementedError("Exercise {region.label}")']
    tuple_target = "," in region.target and ":" not in region.target and "[" not in region.target
    value = ", ".join("..." for _ in region.target.split(",")) if tuple_target else "..."
    return [f"{region.indent}{region.target} = {value}"]


def make_student(nb, name: str = "notebook"):
    """The student version of master lab ``nb`` (a new notebook; ``nb`` is not modified).

    Solutions become ``raise NotImplementedError("Exercise N.k")`` / ``name = ...``, instructor cells are
    dropped, outputs stripped. Raises ValueError (naming ``name`` and the exercise) if ``nb`` is malformed.
    """
    from labkit import notebook

    lab = parse(nb, name)
    student = copy.deepcopy(nb)
    _rewrite(student, lab.regions, _stub)
    student.cells = [cell for cell in student.cells if not is_instructor(cell)]
    notebook.strip(student)
    return student


def substitute(nb, answers: dict[str, str | list[str | None]], name: str = "notebook"):
    """A copy of master ``nb`` with the solution region(s) of some exercises replaced by other code.

    ``answers[label]`` is the code for the exercise's first region, or a list with one entry per region
    (``None`` keeps that region's solution). A block region (``# BEGIN`` … ``# END SOLUTION``, markers
    included) and a ``# SOLUTION`` line are both replaced by the code, indented like the region. Used by the
    lab tests to prove that a wrong answer fails its check.
    """
    lab = parse(nb, name)
    unknown = sorted(set(answers) - set(lab.exercises))
    if unknown:
        raise ValueError(f"{name}: no exercise {', '.join(unknown)}; "
                         f"exercises are {', '.join(lab.exercises)}")
    plan: dict[int, str] = {}
    for label, code in answers.items():
        regions = [k for k, r in enumerate(lab.regions) if r.label == label]
        codes = [code] if isinstance(code, str) else list(code)
        if len(codes) > len(regions):
            raise ValueError(f"{name}: exercise {label} has {len(regions)} solution region(s), "
                             f"got {len(codes)} replacements")
        for k, text in zip(regions, codes):
            if text is not None:
                plan[k] = text
    out = copy.deepcopy(nb)
    index = {id(r): k for k, r in enumerate(lab.regions)}

    def replace(region: Region):
        k = index[id(region)]
        if k not in plan:
            return None
        return textwrap.indent(textwrap.dedent(plan[k]).strip("\n"), region.indent,
                               lambda line: True).splitlines()

    _rewrite(out, lab.regions, replace)
    return out


# ---------------------------------------------------------------------------------------------- the CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write the student version of each master lab "
                          "(solutions removed, instructor notes dropped, outputs stripped).")
    parser.add_argument("labs", nargs="+", metavar="LAB",
                        help="master notebooks, or folders (their lab*.ipynb)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the student versions (same names)")
    parser.add_argument("--force", action="store_true", help="overwrite student versions that already exist")


def lab_paths(paths: list[str | Path]) -> list[Path]:
    """Expand folders to their ``lab*.ipynb``; check files exist and are notebooks."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("lab*.ipynb"))
            if not found:
                raise FileNotFoundError(f"no lab*.ipynb in folder {path}")
            out.extend(found)
        elif not path.exists():
            raise FileNotFoundError(f"no such lab: {path}")
        elif path.suffix != ".ipynb":
            raise ValueError(f"{path} is not a notebook (expected a .ipynb file or a folder of them)")
        else:
            out.append(path)
    return out


def read_notebook(path: Path):
    """``labkit.notebook.read`` that also turns valid JSON which is not a notebook into a ValueError."""
    from labkit import notebook

    try:
        nb = notebook.read(path)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as err:  # nbformat raises assorted errors for JSON that is not a notebook
        raise ValueError(f"{path} is not a valid notebook: {err}") from err
    if not isinstance(nb.get("cells"), list):
        raise ValueError(f"{path} is not a valid notebook: it has no list of cells")
    return nb


def run(args: argparse.Namespace) -> int:
    from labkit import notebook

    masters = lab_paths(args.labs)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out must be a folder, got the file {out_dir}")
    plans = []
    targets: dict[Path, Path] = {}
    for master in masters:
        if out_dir.resolve() == master.parent.resolve():
            raise ValueError(f"--out {out_dir} is the folder of the master {master}: the student version "
                             "would overwrite it; choose another folder")
        target = out_dir / master.name
        if target.resolve() in targets:
            raise ValueError(f"{master} and {targets[target.resolve()]} would both be written to {target}")
        targets[target.resolve()] = master
        student = make_student(read_notebook(master), name=str(master))
        plans.append((master, target, student))
    existing = [str(target) for _, target, _ in plans if target.exists()]
    if existing and not args.force:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); pass --force to overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    for master, target, student in plans:
        notebook.write(student, target)
        print(f"assign: {master} -> {target} ({len(exercises(student))} exercises)")
    return 0
