"""Issue 15 item 14: CI installs exactly what the README's quick start says. Issue 29: the README's
code map and docs/ARCHITECTURE.md name every module, and the code cites the design document that
lives in the repository (docs/DESIGN.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the importers' peers, whose own code the parity tests run: installed without their dependencies
# (they pin torchvision and pytorch-lightning, which would replace the CPU build of torch)
PEERS = "taming-transformers==0.0.1 DALL-E==0.1 rudalle==1.1.3 basicsr==1.4.2"


def quick_start_commands() -> list[str]:
    """The command lines of the README's quick-start code blocks (comments dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Quick start") : text.index("\n## ", text.index("## Quick start"))]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line:
                commands.append(" ".join(line.split()))
    return commands


def ci_commands() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    return [" ".join(line.split()) for line in lines if line.strip() and not line.startswith("#")]


def test_quick_start_has_two_commands_and_a_cpu_variant():
    commands = quick_start_commands()
    assert "pip install -e . && dalle-studio" in commands
    peers = f"pip install --no-deps {PEERS}"
    assert f'pip install -e ".[test]" && {peers} && python -m pytest' in commands
    cpu = [c for c in commands if "download.pytorch.org/whl/cpu" in c]
    assert len(cpu) == 2, cpu
    assert cpu[0].endswith("&& pip install -e . && dalle-studio")
    assert cpu[1].endswith(f'&& pip install -e ".[test]" && {peers} && python -m pytest')


def test_ci_runs_the_readme_cpu_lines_verbatim():
    commands = quick_start_commands()
    ci = ci_commands()
    cpu_torch = next(c for c in commands if "download.pytorch.org/whl/cpu" in c).split(" && ")[0]
    assert ci[ci.index(cpu_torch)] == cpu_torch  # the torch step, before anything else installs
    first_install = next(i for i, c in enumerate(ci) if "pip install" in c)
    assert ci[first_install] == cpu_torch
    test_line = next(c for c in commands if c.endswith("python -m pytest") and "whl/cpu" in c)
    assert ci[-1] == test_line  # and the README's test command is what CI ends with


def test_ci_system_packages_are_the_readmes():
    readme_packages = set()
    for command in quick_start_commands():
        if command.startswith("sudo apt-get install"):
            readme_packages.update(command.split()[3:])
    text = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_install = re.search(r"apt-get install -y -qq (.*?)>/dev/null", text, flags=re.S)
    assert ci_install is not None
    ci_packages = set(ci_install.group(1).replace("\\", " ").split())
    assert ci_packages and ci_packages <= readme_packages, ci_packages - readme_packages


def product_modules() -> list[str]:
    """Every module of ``model/`` and ``studio/`` by path; a package's ``__init__.py`` is named by
    its folder."""
    names = []
    for package in ("model", "studio"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            names.append(
                relative[: -len("__init__.py")] if path.name == "__init__.py" else relative
            )
    return names


@pytest.mark.parametrize("doc", ["README.md", "docs/ARCHITECTURE.md"])
def test_the_code_map_names_every_module(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    modules = product_modules()
    assert "model/networks/dvae.py" in modules  # the walk found the floors
    missing = [
        name for name in modules if (name if name.endswith("/") else f"`{name}`") not in text
    ]
    assert not missing, f"{doc} does not name: {missing}"


def test_the_code_cites_the_design_document_in_the_repository():
    assert (ROOT / "docs" / "DESIGN.md").is_file()
    citations = []
    for folder in ("model", "studio", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == Path(__file__).name:
                continue  # this test names the file it looks for
            for line in path.read_text(encoding="utf-8").splitlines():
                citations += re.findall(r"[\w./]*DESIGN\.md", line)
    assert citations, "no citation found: the walk is broken"
    assert set(citations) == {"docs/DESIGN.md"}, set(citations)
