"""Colab-like install: a fresh venv, labkit from a built wheel (non-editable, the way the setup cell
installs it), and lab 0 executed with FAST parameters from a folder outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from nbrun import ROOT

pytestmark = pytest.mark.slow


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_wheel_installs_in_a_fresh_venv_and_runs_lab0_outside_the_repo(tmp_path):
    lab = ROOT / "labs" / "lab00_memory.ipynb"
    if not lab.exists():
        pytest.skip("labs/lab00_memory.ipynb not written yet")
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
          "-q", "-w", str(wheels)])
    wheel = next(wheels.glob("labkit-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    # Like Colab: torch is already there before labkit arrives (here the CPU wheel CI pins).
    _run(pip + ["-c", str(ROOT / ".ci" / "constraints.txt"), "torch"], timeout=900)
    _run(pip + [str(wheel), "papermill"], timeout=900)

    outside = tmp_path / "student"
    outside.mkdir()
    shutil.copy(lab, outside / lab.name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(LABKIT_PROGRESS="0", OMP_WAIT_POLICY="PASSIVE")
    _run([str(venv / "bin" / "papermill"), lab.name, "executed.ipynb", "-f",
          str(ROOT / "tests" / "fast_params.yml"), "--cwd", str(outside)],
         cwd=outside, env=env, timeout=900)

    executed = json.loads((outside / "executed.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert "✓ Exercise 0.1 passed" in text
    where = _run([str(venv / "bin" / "python"), "-c", "import labkit, labkit.kernels; print(labkit.__file__)"],
                 cwd=outside, env=env).stdout
    assert str(venv) in where and str(ROOT) not in where, f"labkit imported from {where}"
