"""Size creep is guarded: no product file (``model/**``, ``studio/**`` .py) over 600 lines and no
function over 80 (``end_lineno - lineno + 1``, decorators not counted), except those named below
with their reason. A new exception needs a reason a reviewer accepts; a stale one fails too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "studio", "krita_plugin")
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80

# Exceptions by name, each with its reason: tables that read best as one block.
FILE_EXCEPTIONS: dict[str, str] = {}
FUNCTION_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("model/cli/__init__.py", "build_parser"): (
        "argparse table: one add_argument row per option, read top to bottom as the CLI's help"
    ),
}


def function_sizes(tree: ast.AST, prefix: str = "") -> dict[str, int]:
    """Each function's length in ``tree``, named with its classes and enclosing functions
    (e.g. ``Engine._run``)."""
    sizes: dict[str, int] = {}
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = prefix + child.name
            if not isinstance(child, ast.ClassDef):
                sizes[name] = child.end_lineno - child.lineno + 1  # type: ignore[operator]
            sizes.update(function_sizes(child, name + "."))
        else:
            sizes.update(function_sizes(child, prefix))
    return sizes


def measure(root: Path) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """Every product file's line count and every function's length, keyed by the path relative
    to ``root``."""
    files: dict[str, int] = {}
    functions: dict[tuple[str, str], int] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            source = path.read_text(encoding="utf-8")
            files[rel] = len(source.splitlines())
            tree = ast.parse(source, filename=rel)
            functions.update({(rel, name): n for name, n in function_sizes(tree).items()})
    return files, functions


def oversized(
    root: Path,
    file_exceptions: dict[str, str],
    function_exceptions: dict[tuple[str, str], str],
) -> list[str]:
    """One line per file or function over its limit and not excepted, naming it, its size and
    the limit."""
    files, functions = measure(root)
    problems = [
        f"{rel}: {lines} lines, over the limit of {MAX_FILE_LINES} (split it)"
        for rel, lines in files.items()
        if lines > MAX_FILE_LINES and rel not in file_exceptions
    ]
    problems += [
        f"{rel}: function {name} is {size} lines, over the limit of {MAX_FUNCTION_LINES}"
        " (break it up)"
        for (rel, name), size in functions.items()
        if size > MAX_FUNCTION_LINES and (rel, name) not in function_exceptions
    ]
    return problems


def test_no_product_file_or_function_is_over_its_limit():
    problems = oversized(
        ROOT,
        FILE_EXCEPTIONS,
        FUNCTION_EXCEPTIONS,
    )
    assert not problems, "\n".join(problems)


def test_every_exception_is_still_needed():
    """An exception whose file or function shrank under the limit (or went away) is removed, so
    the list never excuses new growth."""
    files, functions = measure(ROOT)
    stale = [
        f"{rel}: excepted but {files.get(rel, 'absent')} lines"
        for rel in FILE_EXCEPTIONS
        if files.get(rel, 0) <= MAX_FILE_LINES
    ]
    stale += [
        f"{rel}: function {name} excepted but {functions.get((rel, name), 'absent')} lines"
        for rel, name in FUNCTION_EXCEPTIONS
        if functions.get((rel, name), 0) <= MAX_FUNCTION_LINES
    ]
    assert not stale, "\n".join(stale)


@pytest.mark.parametrize("reason", [*FILE_EXCEPTIONS.values(), *FUNCTION_EXCEPTIONS.values()])
def test_every_exception_gives_its_reason(reason):
    assert len(reason.split()) >= 3, reason


def test_the_guard_names_the_file_or_function_its_size_and_the_limit(tmp_path):
    """Injected violations: a 601-line file and an 81-line method fail; 600 and 80 pass; an
    exception by name lets them through."""
    package = tmp_path / "model"
    package.mkdir()
    (tmp_path / "studio").mkdir()
    (package / "big.py").write_text("x = 1\n" * 601)
    (package / "fits.py").write_text("x = 1\n" * 600)
    run = "".join("        x = 1\n" for _ in range(79))  # def + 79 + return: 81 lines
    short = "".join("    y = 1\n" for _ in range(78))  # def + 78 + return: 80 lines
    (package / "worker.py").write_text(
        f"class Worker:\n    def run(self):\n{run}        return x\n\n"
        f"def short():\n{short}    return y\n"
    )
    problems = oversized(tmp_path, {}, {})
    assert problems == [
        "model/big.py: 601 lines, over the limit of 600 (split it)",
        "model/worker.py: function Worker.run is 81 lines, over the limit of 80 (break it up)",
    ]
    excepted = oversized(tmp_path, {"model/big.py": "r"}, {("model/worker.py", "Worker.run"): "r"})
    assert excepted == []
