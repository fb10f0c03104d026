"""CI's lint: ``ruff check .`` and ``ruff format --check .`` pass on the repository (rules and
line length from pyproject.toml), so the README's test command covers them. A lint error and an
unformatted line are each reported (an injected file fails)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def ruff_command() -> list[str]:
    """ruff as this interpreter's module (the test extra installs it), else on PATH."""
    probe = subprocess.run(
        [sys.executable, "-m", "ruff", "--version"], capture_output=True, text=True, timeout=60
    )
    if probe.returncode == 0:
        return [sys.executable, "-m", "ruff"]
    if shutil.which("ruff"):
        return [shutil.which("ruff")]  # type: ignore[list-item]
    pytest.skip("ruff is not installed (pip install -e '.[test]' brings it)")


def ruff(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ruff_command(), *args, "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ruff_check_passes():
    result = ruff("check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_check_passes():
    result = ruff("format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_reports_an_injected_lint_error_and_unformatted_file(tmp_path):
    """The same commands on a copy of the config with one bad file: both fail, naming it."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "bad.py").write_text("import os\nx = {  'a':1 }\n")
    checked = ruff("check", ".", cwd=tmp_path)
    assert checked.returncode == 1
    assert "bad.py" in checked.stdout and "F401" in checked.stdout
    formatted = ruff("format", "--check", ".", cwd=tmp_path)
    assert formatted.returncode == 1
    assert "bad.py" in formatted.stdout
