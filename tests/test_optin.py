"""Opted-in tests do not skip: with FRPO_SLURM_TESTS=1, a machine without SLURM fails the SLURM tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A pytest plugin that makes tests/test_slurm.py see a machine without SLURM, whatever this one has.
PLUGIN = '''
def pytest_collection_modifyitems(session, config, items):
    import test_slurm
    test_slurm._missing_prerequisite = lambda: "SLURM not installed (simulated by tests/test_optin.py)"
'''


def _run(tmp_path, opted_in: bool):
    (tmp_path / "no_slurm_plugin.py").write_text(PLUGIN)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("FRPO_SLURM_TESTS", None)
    if opted_in:
        env["FRPO_SLURM_TESTS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no_slurm_plugin", "-q", "-rs",
                           "tests/test_slurm.py", "-k", "smoke_workflow"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_opted_in_slurm_tests_fail_without_slurm(tmp_path):
    result = _run(tmp_path, opted_in=True)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "FRPO_SLURM_TESTS=1 but SLURM not installed (simulated" in out
    assert "skipped" not in out.splitlines()[-1], out[-2000:]


def test_without_opting_in_they_skip(tmp_path):
    result = _run(tmp_path, opted_in=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "1 skipped" in out.splitlines()[-1] and "opt-in" in out
