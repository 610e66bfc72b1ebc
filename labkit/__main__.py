"""``python -m labkit <command>``: the instructor's and maintainer's tools.

  assign LABS... --out DIR     master lab(s) -> student version(s) (solutions removed, instructor notes dropped)
  grade SUBMISSIONS... --out grades.csv   execute submissions, score each exercise from its check cell
  stamp [NOTEBOOKS...]         write the setup cell of every notebook from the template
  strip [NOTEBOOKS...]         remove outputs and volatile metadata
  lint-notebooks [NOTEBOOKS...]  report every notebook that breaks the notebook contract
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _notebook_paths(paths: list[str]) -> list[Path]:
    from labkit import notebook

    if not paths:
        return notebook.notebooks(".")
    out = []
    for p in map(Path, paths):
        out.extend(sorted(p.glob("*.ipynb")) if p.is_dir() else [p])
    return out


def _stamp_or_strip(args) -> int:
    from labkit import notebook

    for path in _notebook_paths(args.notebooks):
        nb = notebook.read(path)
        changed = notebook.stamp(nb) if args.command == "stamp" else notebook.strip(nb)
        if changed:
            notebook.write(nb, path)
            print(f"{args.command}: {path}")
    return 0


def _lint(args) -> int:
    from labkit import notebook

    status = 0
    for path in _notebook_paths(args.notebooks):
        for problem in notebook.problems(notebook.read(path)):
            print(f"{path}: {problem}")
            status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    from labkit import assign, grade

    assign.add_arguments(sub.add_parser("assign", help="write student versions of master labs"))
    grade.add_arguments(sub.add_parser("grade", help="execute and score student submissions"))
    for name in ("stamp", "strip", "lint-notebooks"):
        p = sub.add_parser(name)
        p.add_argument("notebooks", nargs="*", help="notebooks or folders (default: book/ and labs/)")

    args = parser.parse_args(argv)
    try:
        if args.command == "assign":
            return assign.run(args)
        if args.command == "grade":
            return grade.run(args)
        if args.command == "lint-notebooks":
            return _lint(args)
        return _stamp_or_strip(args)
    except (FileNotFoundError, ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
