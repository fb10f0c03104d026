"""CI's type check: mypy, configured in pyproject.toml ([tool.mypy]), passes on the torch-free
modules it lists (every function there typed, every body checked), and does catch a wrong
argument type (an injected call fails, naming the line, the argument and the types)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "pyproject.toml"
TYPED = [
    "model/geometry.py",
    "model/files.py",
    "model/serve/protocol.py",
    "studio/document.py",
    "studio/entry.py",
    "studio/project.py",
    "studio/session.py",
]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed (pip install -e '.[test]' brings it)",
)


def mypy(*args: str) -> subprocess.CompletedProcess:
    """mypy with the project's configuration, run from the repository root (so that ``model``
    and ``studio`` are this checkout's)."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(CONFIG), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_configured_modules_are_the_torch_free_ones():
    tomllib = pytest.importorskip("tomllib", reason="tomllib comes with Python 3.11")
    configured = tomllib.loads(CONFIG.read_text(encoding="utf-8"))["tool"]["mypy"]
    assert configured["files"] == TYPED
    strict = configured["overrides"][0]
    assert strict["disallow_untyped_defs"] is True
    assert sorted(strict["module"]) == sorted(
        path.removesuffix(".py").replace("/", ".") for path in TYPED
    )


def test_the_typed_modules_pass_mypy():
    result = mypy()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Success: no issues found in {len(TYPED)} source files" in result.stdout


def test_mypy_reports_a_wrong_argument_type(tmp_path):
    snippet = tmp_path / "wrong_argument.py"
    snippet.write_text(
        "from model.geometry import Geometry\n"
        "\n"
        "geometry = Geometry(width=512, height=512, size=256, factor=8)\n"
        'geometry.cell_at("10", 20.0)\n'
    )
    result = mypy("--cache-dir", os.devnull, str(snippet))  # checked afresh, no cached answer
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f'{snippet}:4: error: Argument 1 to "cell_at" of "Geometry" has incompatible type "str"; '
        'expected "float"  [arg-type]'
    ) in result.stdout, result.stdout
    assert "Found 1 error in 1 file" in result.stdout
