"""The layering: import-linter's contracts (pyproject.toml) hold, and fail when an import breaks
them (the floors of model/ included: a network reaching the command line, the bundle reaching the
sampler, training reaching evaluation beside it); the document imports no torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "pyproject.toml"
CONTRACTS = {
    "model-without-qt": "model never imports Qt, qasync or the studio",
    "studio-through-engine": "studio reaches model via engine, catalog, geometry, files, config",
    "document-without-torch": "studio document, project, template: no torch, no engine",
    "widgets-without-engine": "studio widgets: no engine, no torch (the session has its facts)",
    "model-floors": "model's floors import only downwards",
}
# `lint-imports` itself, run by this interpreter (a console script may not be on PATH)
LINT_IMPORTS = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """Check the project's contracts against the packages ``model`` and ``studio`` in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS, "--no-cache", "--no-logo", str(CONFIG)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in CONTRACTS.values():
        assert f"{name} KEPT" in result.stdout
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("path", "line", "broken", "reported"),
    [
        (
            "model/geometry.py",
            "import PySide6.QtCore",
            "model-without-qt",
            "model.geometry -> PySide6",
        ),
        (
            "model/inference/images.py",
            "from studio import document",
            "model-without-qt",
            "model.inference.images -> studio.document",
        ),
        (
            "studio/widgets/canvas.py",
            "from model.inference import sampling",
            "studio-through-engine",
            "studio.widgets.canvas -> model.inference.sampling",
        ),
        (
            "studio/document.py",
            "import torch",
            "document-without-torch",
            "studio.document -> torch",
        ),
        (
            "studio/widgets/menus.py",
            "from studio import engine",
            "widgets-without-engine",
            "studio.widgets.menus -> studio.engine",
        ),
        (
            "studio/widgets/status.py",
            "import torch",
            "widgets-without-engine",
            "studio.widgets.status -> torch",
        ),
        (
            "model/networks/transformer.py",
            "import model.cli",
            "model-floors",
            "model.networks.transformer -> model.cli",
        ),
        (
            "model/bundle/io.py",
            "from model.inference import sampling",
            "model-floors",
            "model.bundle.io -> model.inference.sampling",
        ),
        (
            "model/training/trainer.py",
            "from model.evaluation import evaluate",
            "model-floors",
            "model.training.trainer -> model.evaluation.evaluate",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path, path, line, broken, reported):
    for package in ("model", "studio"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    with open(tmp_path / path, "a", encoding="utf-8") as source:
        source.write(f"\n{line}\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert f"{CONTRACTS[broken]} BROKEN" in result.stdout
    assert f"Contracts: {len(CONTRACTS) - 1} kept, 1 broken." in result.stdout
    assert reported in result.stdout  # the report names the offending import


def test_importing_the_document_loads_no_torch():
    probe = (
        "import sys, studio.document; print(sorted({'torch', 'studio.engine'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
