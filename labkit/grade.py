"""``python -m labkit grade``: execute student submissions and score each exercise by its check.

Each submission runs in a fresh kernel (nbclient, ``allow_errors``) in its own folder, with
``LABKIT_GRADE_TOKEN`` set to a fresh random secret and ``LABKIT_PROGRESS=0``. A passing check prints a
receipt derived from that secret (:func:`labkit.check.receipt`); an exercise scores 1 iff the executed
notebook's output holds the exact receipt line of its label. So a deleted check cell, a hand-printed
"passed" line, a crashed kernel or a cell that never ends all score 0 for what did not pass.

Limits of each run: ``--cell-timeout`` per cell (the kernel is interrupted and the next cell runs), and
``--timeout`` for the whole notebook (the kernel is killed; what passed before still counts). The notebook
header (title, setup, parameters, environment cells) installs and imports the heavy libraries, so only the
total limit applies to it.

Cells are counted from 0, as in labkit's other messages.

Not a sandbox: the submission's code runs with the grader's rights and can read the secret from its
environment. Run untrusted submissions in a container, and keep hidden tests outside the notebook.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit.check import GRADE_TOKEN_ENV, PASS_MARK, receipt

DEFAULT_CELL_TIMEOUT = 60
DEFAULT_TIMEOUT = 600
SETUP_TAG = "setup"  # the stamped setup cell (labkit.notebook.SETUP_TAGS)
_KILL_GRACE = 30  # seconds to wait for nbclient to notice a killed kernel before abandoning the run


class Interrupted(Exception):
    """The grader was stopped (Ctrl-C / SIGTERM) while a submission ran."""


@dataclass
class Execution:
    """What happened when a notebook ran: the executed notebook and what went wrong, cell by cell."""

    nb: object
    seconds: float = 0.0
    timed_out_cells: list[int] = field(default_factory=list)  # interrupted after the per-cell timeout
    died_in: int | None = None  # cell running when the kernel died
    total_timeout_in: int | None = None  # cell running when the total time limit killed the kernel
    failure: str = ""  # kernel could not start, or another error outside the cells
    interrupted: bool = False  # the grader itself got SIGINT/SIGTERM (nbclient then stops the kernel)

    def notes(self, cell_timeout: float | None = None, timeout: float | None = None) -> list[str]:
        notes = []
        for index in self.timed_out_cells:
            after = f" (> {cell_timeout:g} s, interrupted)" if cell_timeout else ""
            notes.append(f"timed out in cell {index}{after}")
        if self.total_timeout_in is not None:
            limit = f" ({timeout:g} s)" if timeout else ""
            notes.append(f"total time limit{limit} reached in cell {self.total_timeout_in}; kernel killed")
        elif self.died_in is not None:
            notes.append(f"kernel died in cell {self.died_in}")
        if self.failure:
            notes.append(self.failure)
        return notes


def output_text(cell) -> str:
    """Everything a code cell printed (stdout/stderr streams and text/plain results) as one string."""
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif output.get("output_type") in ("execute_result", "display_data"):
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def output_lines(nb) -> list[str]:
    """Every output line of every code cell of an executed notebook (stripped)."""
    lines = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            lines.extend(line.strip() for line in output_text(cell).splitlines())
    return lines


def cell_error(cell) -> str | None:
    """The exception name of the error output of an executed code cell (None if it ran cleanly)."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return output.get("ename") or "error"
    return None


def passed_labels(nb, token: str | None = None) -> set[str]:
    """Labels whose check passed in executed ``nb``: by receipt when ``token`` is given (the grader), else by
    the "✓ Exercise N.k passed" line (tests of the labs, where nobody forges it)."""
    lines = output_lines(nb)
    if token is not None:
        labels = set()
        for line in lines:
            parts = line[1:-1].split()
            if line.startswith("[labkit-receipt ") and len(parts) == 3 and line == receipt(parts[1], token):
                labels.add(parts[1])
        return labels
    found = set()
    prefix = f"{PASS_MARK} Exercise "
    for line in lines:
        if line.startswith(prefix) and " passed" in line:
            found.add(line[len(prefix):].split(" ", 1)[0])
    return found


def header_length(nb) -> int:
    """How many leading cells form the notebook header (title, setup, parameters, environment; see
    :mod:`labkit.notebook`): up to the cell that starts with ``ENV = labkit.setup(...)``, else up to the
    last cell tagged ``setup``, ``parameters`` or ``injected-parameters`` among the first few."""
    from labkit.notebook import ENV_LINE

    end = 0
    for i, cell in enumerate(nb.cells[:6]):
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.cell_type == "code" and cell.source.startswith(ENV_LINE):
            return i + 1
        if SETUP_TAG in tags or "parameters" in tags or "injected-parameters" in tags:
            end = i + 1
    return end


def with_parameters(nb, parameters: dict[str, object]):
    """A copy of ``nb`` with a cell ``NAME = value`` per parameter after the cell tagged ``parameters``
    (papermill's convention: the injected cell is tagged ``injected-parameters``)."""
    import copy

    import nbformat

    out = copy.deepcopy(nb)
    if not parameters:
        return out
    source = "# Parameters injected by labkit\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    tagged = [i for i, c in enumerate(out.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    out.cells.insert(tagged[0] + 1 if tagged else 0, cell)
    return out


async def _execute(nb, cwd: Path, env: dict[str, str], cell_timeout: float | None, timeout: float | None,
                   kernel_name: str) -> Execution:
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError
    from nbclient.util import ensure_async

    from labkit import notebook

    notebook.strip(nb)  # outputs of cells that never run (after a crash) must not look like results
    result = Execution(nb=nb)
    current: dict[str, int | None] = {"cell": None}

    def on_cell_execute(cell, cell_index):
        current["cell"] = cell_index

    header = {id(cell) for cell in nb.cells[:header_length(nb)]}

    def cell_limit(cell) -> int | None:
        # The header installs and imports the heavy libraries: only the total limit applies to it.
        if id(cell) in header or not cell_timeout:
            return None
        return max(1, round(cell_timeout))

    class Client(NotebookClient):
        async def _async_handle_timeout(self, timeout, cell=None):  # note which cell was interrupted
            if current["cell"] is not None and current["cell"] not in result.timed_out_cells:
                result.timed_out_cells.append(current["cell"])
            return await super()._async_handle_timeout(timeout, cell)

    client = Client(nb, timeout_func=cell_limit, allow_errors=True, interrupt_on_timeout=True,
                    kernel_name=kernel_name, shutdown_kernel="immediate", record_timing=False,
                    resources={"metadata": {"path": str(cwd)}}, on_cell_execute=on_cell_execute)
    task = asyncio.ensure_future(client.async_execute(env=env))
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:  # the grader is stopping: stop this run too (nbclient kills its kernel)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    if not done:  # past the total limit: kill the kernel; nbclient then sees it die and returns
        result.total_timeout_in = current["cell"]
        km = client.km
        if km is not None:
            try:
                await ensure_async(km.shutdown_kernel(now=True))
            except Exception:  # already gone
                pass
        done, _ = await asyncio.wait({task}, timeout=_KILL_GRACE)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=_KILL_GRACE)
    # nbclient answers SIGINT/SIGTERM by stopping the kernel (and records the clean-up it started)
    result.interrupted = getattr(client, "_async_cleanup_kernel_future", None) is not None
    if task.done() and not task.cancelled():
        err = task.exception()
        if isinstance(err, DeadKernelError):
            if result.total_timeout_in is None:
                result.died_in = current["cell"]
        elif err is not None and result.total_timeout_in is None:
            result.failure = f"{type(err).__name__}: {_one_line(err)}"
    return result


def _kernel_env(env: dict[str, str] | None) -> dict[str, str]:
    kernel_env = {k: v for k, v in os.environ.items() if k != GRADE_TOKEN_ENV}
    kernel_env["LABKIT_PROGRESS"] = "0"
    kernel_env.update(env or {})
    return kernel_env


async def _timed_execute(nb, cwd, cell_timeout, timeout, env, kernel_name) -> Execution:
    start = time.perf_counter()
    result = await _execute(nb, Path(cwd).resolve(), _kernel_env(env), cell_timeout, timeout, kernel_name)
    result.seconds = time.perf_counter() - start
    return result


def execute(nb, cwd: str | Path = ".", *, cell_timeout: float | None = DEFAULT_CELL_TIMEOUT,
            timeout: float | None = DEFAULT_TIMEOUT, env: dict[str, str] | None = None,
            kernel_name: str = "python3") -> Execution:
    """Run every cell of ``nb`` (in place) in a fresh kernel started in ``cwd``, errors allowed.

    A cell running past ``cell_timeout`` s is interrupted and the next cell runs (the header cells are
    exempt: see :func:`header_length`); past ``timeout`` s in all the kernel is killed. Never raises for what
    the notebook does: see the returned :class:`Execution`. ``env`` adds to the grader's environment
    (``LABKIT_PROGRESS=0`` always; ``LABKIT_GRADE_TOKEN`` only if given).
    """
    return asyncio.run(_timed_execute(nb, cwd, cell_timeout, timeout, env, kernel_name))


@dataclass
class Grade:
    """One submission's scores (label -> 0/1) and notes."""

    submission: str
    scores: dict[str, int]
    notes: list[str]
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.scores.values())

    @property
    def status(self) -> str:
        return "; ".join(self.notes) if self.notes else "ok"


async def _grade(path: Path, labels: list[str], cell_timeout, timeout, parameters, kernel_name,
                 keep) -> Grade:
    from labkit import assign, notebook

    zeros = dict.fromkeys(labels, 0)
    try:
        nb = assign.read_notebook(path)
    except (FileNotFoundError, ValueError) as err:
        return Grade(str(path), zeros, [f"not gradable: {_one_line(err)}"])
    nb = with_parameters(nb, parameters or {})
    checks = assign.check_cells(nb)
    token = secrets.token_hex(16)
    run = await _timed_execute(nb, path.parent, cell_timeout, timeout, {GRADE_TOKEN_ENV: token}, kernel_name)
    if run.interrupted:
        raise Interrupted(f"interrupted while grading {path}")
    passed = passed_labels(run.nb, token)
    scores = {label: int(label in passed) for label in labels}
    notes = run.notes(cell_timeout, timeout)
    for label in labels:
        if scores[label]:
            continue
        if label not in checks:
            notes.append(f"{label}: no check cell")
            continue
        errors = [e for e in (cell_error(run.nb.cells[i]) for i in checks[label]) if e]
        if errors:
            notes.append(f"{label}: {errors[0]}")
    if keep is not None:
        notebook.write(run.nb, keep)
    return Grade(str(path), scores, notes, run.seconds)


def grade_submission(path: str | Path, labels: list[str], *,
                     cell_timeout: float | None = DEFAULT_CELL_TIMEOUT,
                     timeout: float | None = DEFAULT_TIMEOUT,
                     parameters: dict[str, object] | None = None, kernel_name: str = "python3",
                     keep: Path | None = None) -> Grade:
    """Execute the submission at ``path`` (cwd = its folder, a fresh grading secret) and score each of
    ``labels`` by its receipt; a file that is no notebook scores 0 with a note."""
    return asyncio.run(_grade(Path(path), labels, cell_timeout, timeout, parameters, kernel_name, keep))


async def _grade_all(submissions: list[Path], labels: list[str], jobs: int, kept: list[Path | None],
                     report_progress, **options) -> list[Grade]:
    limit = asyncio.Semaphore(max(1, jobs))

    async def one(k: int, sub: Path) -> Grade:
        async with limit:
            g = await _grade(sub, labels, keep=kept[k], **options)
        report_progress(k, sub, g)
        return g

    tasks = [asyncio.ensure_future(one(k, sub)) for k, sub in enumerate(submissions)]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:  # interrupted: stop the other runs and their kernels before leaving
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------------------------------------- outputs


def write_csv(grades: list[Grade], labels: list[str], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["submission", *labels, "total", "max", "status"])
        for g in grades:
            scores = [g.scores[label] for label in labels]
            writer.writerow([g.submission, *scores, g.total, len(labels), g.status])


def report(grades: list[Grade], labels: list[str], master: str) -> str:
    """A short Markdown report: pass rate per exercise, total and notes per submission."""
    n = len(grades)
    lines = [f"# Grades: {Path(master).stem}", "",
             f"{n} submission{'s' if n != 1 else ''} graded against `{master}` "
             f"({len(labels)} exercise{'s' if len(labels) != 1 else ''}).", ""]
    if n:
        mean = sum(g.total for g in grades) / n
        lines += [f"Mean score: {mean:.2f} / {len(labels)}.", ""]
    lines += ["## Per exercise", "", "| Exercise | Passed | Rate |", "|---|---:|---:|"]
    for label in labels:
        passed = sum(g.scores[label] for g in grades)
        rate = f"{100 * passed / n:.0f} %" if n else "–"
        lines.append(f"| {label} | {passed} / {n} | {rate} |")
    lines += ["", "## Per submission", "", "| Submission | Score | Time | Notes |", "|---|---:|---:|---|"]
    for g in grades:
        notes = g.status.replace("|", "\\|")
        lines.append(f"| `{g.submission}` | {g.total} / {len(labels)} | {g.seconds:.1f} s | {notes} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- the CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Execute each submission in a fresh kernel and score every exercise of the master "
                          "by its check's receipt.")
    parser.add_argument("submissions", nargs="+", metavar="SUBMISSION",
                        help="submitted notebooks, or folders (their *.ipynb)")
    parser.add_argument("--master", required=True,
                        help="the master lab: its exercise headings are what is scored")
    parser.add_argument("--out", required=True, metavar="CSV", help="grades table (one row per submission)")
    parser.add_argument("--report", metavar="MD", help="also write a Markdown report")
    parser.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT, metavar="S",
                        help="seconds per cell before the kernel is interrupted (default %(default)g)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                        help="seconds per submission before the kernel is killed (default %(default)g)")
    parser.add_argument("--fast", action="store_true",
                        help="inject FAST = True after the parameters cell (the labs' quick mode)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="grade N submissions at once (default 1; each needs a core)")
    parser.add_argument("--kernel", default="python3", help="kernel name (default python3: this Python)")
    parser.add_argument("--keep-executed", metavar="DIR", help="save each executed submission into DIR")
    parser.add_argument("--force", action="store_true", help="overwrite --out, --report and kept notebooks")


def submission_paths(paths: list[str | Path]) -> list[Path]:
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.glob("*.ipynb") if not p.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"no .ipynb in folder {path}")
            out.extend(found)
        elif not path.exists():
            raise FileNotFoundError(f"no such submission: {path}")
        else:
            out.append(path)
    return out


def run(args: argparse.Namespace) -> int:
    from labkit import assign

    master = Path(args.master)
    labels = assign.exercises(assign.read_notebook(master))
    if not labels:
        raise ValueError(f"master {master} has no `## Exercise N.k — …` headings: nothing to grade")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.cell_timeout <= 0 or args.timeout <= 0:
        raise ValueError(f"timeouts must be > 0 s, got --cell-timeout {args.cell_timeout} "
                         f"--timeout {args.timeout}")
    try:
        from jupyter_client.kernelspec import NoSuchKernel, get_kernel_spec

        get_kernel_spec(args.kernel)
    except NoSuchKernel as err:
        raise ValueError(f"--kernel {args.kernel!r} is not installed; see `jupyter kernelspec list`") from err
    submissions = submission_paths(args.submissions)
    inputs = {p.resolve() for p in [*submissions, master]}
    outputs = [Path(args.out)] + ([Path(args.report)] if args.report else [])
    keep_dir = Path(args.keep_executed) if args.keep_executed else None
    kept: list[Path | None] = [None] * len(submissions)
    if keep_dir is not None:
        if keep_dir.exists() and not keep_dir.is_dir():
            raise ValueError(f"--keep-executed must be a folder, got the file {keep_dir}")
        names: set[str] = set()
        for k, sub in enumerate(submissions):
            name, n = sub.name, 1
            while name in names:
                n += 1
                name = f"{sub.stem}-{n}{sub.suffix or '.ipynb'}"
            names.add(name)
            kept[k] = keep_dir / name
        outputs += [p for p in kept if p is not None]
    seen: set[Path] = set()
    for out in outputs:
        if out.resolve() in inputs:
            raise ValueError(f"output {out} is one of the inputs; choose another path")
        if out.resolve() in seen:
            raise ValueError(f"output {out} is named twice")
        seen.add(out.resolve())
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not args.force:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); pass --force to overwrite")
    for out in outputs:
        if not out.parent.exists():
            out.parent.mkdir(parents=True, exist_ok=True)

    def report_progress(k: int, sub: Path, g: Grade) -> None:
        print(f"grade [{k + 1}/{len(submissions)}] {sub}: {g.total}/{len(labels)} "
              f"({g.seconds:.1f} s) {g.status}", flush=True)

    try:
        grades = asyncio.run(_grade_all(submissions, labels, args.jobs, kept, report_progress,
                                        cell_timeout=args.cell_timeout, timeout=args.timeout,
                                        parameters={"FAST": True} if args.fast else {},
                                        kernel_name=args.kernel))
    except (Interrupted, KeyboardInterrupt):
        print("grade: interrupted; no grades written", file=sys.stderr)
        return 130
    write_csv(grades, labels, Path(args.out))
    print(f"grade: wrote {args.out}")
    if args.report:
        Path(args.report).write_text(report(grades, labels, str(master)), encoding="utf-8")
        print(f"grade: wrote {args.report}")
    return 0
