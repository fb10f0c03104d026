"""model.config, a package split by family (issue 29): its top level names every public name of its
modules (so ``from model.config import X`` is the one way in, the studio's included), and it loads
the standard library only (a bundle's config, a project, the server's options need no torch)."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import model.config

MODULES = sorted(info.name for info in pkgutil.iter_modules(model.config.__path__))


def public_names(module) -> set[str]:
    """The names ``module`` defines at its top level (not those it imports), leading underscore
    excepted."""
    names = set()
    for node in ast.parse(Path(module.__file__).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets)
        elif isinstance(node, ast.AnnAssign):
            names.add(node.target.id)
    return {name for name in names if not name.startswith("_")}


def test_the_package_has_its_families():
    assert MODULES == ["bundle", "imported", "limits", "ours", "ranges", "recipes", "sampling"]


def test_every_public_name_is_exported_once_from_the_top():
    seen: dict[str, str] = {}
    for name in MODULES:
        module = importlib.import_module(f"model.config.{name}")
        for public in public_names(module):
            assert public not in seen, f"{public} defined in {seen.get(public)} and {name}"
            seen[public] = name
            assert getattr(model.config, public) is getattr(module, public), public
    assert sorted(seen) == sorted(model.config.__all__)


def test_importing_it_loads_the_standard_library_only():
    code = (
        "import sys; before = set(sys.modules); import model.config; "
        "print(sorted(m for m in set(sys.modules) - before "
        "if m.split('.')[0] not in sys.stdlib_module_names and m.split('.')[0] != 'model'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_bundle_config_round_trips_through_every_kind():
    config = model.config.BundleConfig(
        vae=model.config.VQGANConfig(quantize="gumbel", z_channels=256, embed_dim=256),
        text=model.config.YttmTextConfig(),
        transformer=model.config.TransformerConfig(layout="rudalle", head_bias=True),
        reranker=model.config.RerankerConfig(),
    )
    data = json.loads(json.dumps(config.to_dict()))  # as a bundle stores it
    assert data["vae"]["kind"] == "vqgan" and data["text"]["kind"] == "yttm"
    assert "kind" not in data["transformer"] and data["transformer"]["layout"] == "rudalle"
    assert model.config.BundleConfig.from_dict(data) == config
