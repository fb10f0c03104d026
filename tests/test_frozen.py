"""The PyInstaller build (build.spec): it runs the self-test with the bundled model.

Building takes minutes, so: ``DALLE_STUDIO_FROZEN`` names an already built executable (.ci/run
builds one first); otherwise the test builds into a temporary folder, or skips where PyInstaller
is not installed (it is in the ``build`` extra).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.bundle.upscaler_files import SHIPPED_NAME

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def frozen_app(tmp_path_factory) -> Path:
    given = os.environ.get("DALLE_STUDIO_FROZEN")
    if given:
        path = Path(given)
        assert path.is_file(), f"DALLE_STUDIO_FROZEN={given}: no such executable"
        return path
    if importlib.util.find_spec("PyInstaller") is None:
        pytest.skip("PyInstaller is not installed (pip install -e '.[build]')")
    if not (ROOT / "resources" / "models" / "default.dalle.safetensors").is_file():
        pytest.skip("the embedded model is not in this checkout")
    out = tmp_path_factory.mktemp("pyinstaller")
    command = [sys.executable, "-m", "PyInstaller", str(ROOT / "build.spec"), "--noconfirm"]
    command += ["--distpath", str(out / "dist"), "--workpath", str(out / "build")]
    built = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stderr[-3000:]
    return out / "dist" / "dalle-studio" / "dalle-studio"


def test_frozen_app_carries_the_model_and_icon(frozen_app):
    internal = frozen_app.parent / "_internal"
    assert (internal / "resources" / "models" / "default.dalle.safetensors").is_file()
    assert (internal / "resources" / "models" / SHIPPED_NAME).is_file()  # the upscaler
    assert (internal / "resources" / "icons" / "dalle-studio.png").is_file()
    # excluded bindings and Qt modules stay out
    for name in ("PyQt5", "PyQt6", "PySide2"):
        assert not (internal / name).exists()
    qt_libs = {p.name.split(".so")[0] for p in (internal / "PySide6" / "Qt" / "lib").glob("*.so*")}
    assert not {"libQt6WebEngineCore", "libQt6Qml", "libQt6Quick"} & qt_libs


def test_frozen_app_selftest_completes_with_the_bundled_model(frozen_app, tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HOME=str(tmp_path))
    result = subprocess.run(
        [str(frozen_app), "--selftest", "--selftest-dir", str(tmp_path / "selftest")],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert (tmp_path / "selftest" / "selftest.png").is_file()
    assert (tmp_path / "selftest" / "selftest.dstudio").is_file()
    # nothing was written into the bundle's folder
    assert not list(frozen_app.parent.rglob("*.dstudio"))
