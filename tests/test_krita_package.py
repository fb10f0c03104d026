"""``dalle krita-plugin --out FILE.zip`` (issue 32): the zip has the layout Krita's Import Python
Plugin from File reads (read by Krita's own importer where Krita is installed), its Python
compiles under the system python3 Krita embeds, pip installs the files it zips, and bad
``--out`` values are one line.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from model.cli import main

ROOT = Path(__file__).resolve().parent.parent
KRITA_IMPORTER = Path("/usr/share/krita/pykrita/plugin_importer/plugin_importer.py")
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin") or sys.executable


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zip") / "dalle_studio.zip"
    assert main(["krita-plugin", "--out", str(out)]) == 0
    return out


def test_the_zip_has_the_desktop_file_the_module_and_the_action(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as archive:
        names = set(archive.namelist())
        desktop = configparser.ConfigParser()
        desktop.read_string(archive.read("dalle_studio.desktop").decode())
        action = archive.read("dalle_studio.action").decode()
    entry = desktop["Desktop Entry"]
    assert entry["X-KDE-Library"] == "dalle_studio"
    assert entry["ServiceTypes"] == "Krita/PythonPlugin" and entry["Name"]
    expected = {"__init__", "client", "core", "docker", "krita_side"}
    assert {f"dalle_studio/{name}.py" for name in expected} <= names
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
    docker = (ROOT / "krita_plugin" / "dalle_studio" / "docker.py").read_text()
    assert '<Action name="dalle_studio_docker">' in action and '"dalle_studio_docker"' in docker


def test_the_zips_python_compiles_under_the_system_python3(plugin_zip, tmp_path):
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(tmp_path)
    done = subprocess.run(
        [SYSTEM_PYTHON, "-m", "compileall", "-q", str(tmp_path / "dalle_studio")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(not KRITA_IMPORTER.exists(), reason="Krita is not installed")
def test_krita_s_own_importer_installs_the_zip(plugin_zip, tmp_path):
    done = subprocess.run(
        [SYSTEM_PYTHON, str(KRITA_IMPORTER), str(plugin_zip), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.stdout.strip() == "Imported plugin: DALL·E Studio", done.stdout + done.stderr
    assert (tmp_path / "pykrita" / "dalle_studio.desktop").is_file()
    assert (tmp_path / "pykrita" / "dalle_studio" / "core.py").is_file()
    assert (tmp_path / "actions" / "dalle_studio.action").is_file()


def test_pip_installs_what_the_zip_needs():
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python 3.11+; we keep 3.10)
    include = re.search(r"\[tool\.setuptools\.packages\.find\]\ninclude = \[(.*?)\]", text)
    assert include is not None and '"krita_plugin*"' in include.group(1)
    assert 'krita_plugin = ["*.desktop", "*.action"]' in text


@pytest.mark.parametrize(
    "out, words",
    [
        ("plugin.txt", "--out must name a .zip file"),
        ("missing/plugin.zip", "--out's folder"),
        ("folder.zip", "is a folder"),
    ],
)
def test_a_bad_out_is_one_line(tmp_path, capsys, out, words):
    (tmp_path / "folder.zip").mkdir()
    assert main(["krita-plugin", "--out", str(tmp_path / out)]) == 2
    error = capsys.readouterr().err
    assert words in error and error.count("\n") == 1
