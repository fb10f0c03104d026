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


def test_files_from_before_the_training_fields_moved_still_load_and_write_as_before():
    """DVAEConfig and TextConfig took TrainConfig's dVAE and caption fields: a bundle (or a
    vae.safetensors) written before has none of them and loads with the old defaults, and one
    at those defaults is written without them, byte for byte as before; other values travel."""
    from model.config import DVAE_TRAINING, BundleConfig, DVAEConfig, TextConfig, config_from_dict
    from model.config.ranges import FIELD_RANGES

    old = {
        "vae": {"image_size": 64, "n_groups": 3, "n_hid": 32, "vocab_size": 512},
        "text": {"vocab_size": 512, "text_len": 32, "bpe_dropout": 0.1},
        "transformer": {"dim": 64, "depth": 2, "heads": 4},
    }
    config = BundleConfig.from_dict(old)
    assert (config.vae.kl_weight, config.vae.kl_warmup, config.vae.code_usage) == (
        6.6,
        5_000 / 150_000,
        0.0,
    )
    assert (config.text.bpe_dropout, config.text.caption_dropout) == (0.1, 0.1)
    written = config.to_dict()
    assert not set(written["vae"]) & set(DVAE_TRAINING)
    assert "caption_dropout" not in written["text"]
    trained = BundleConfig(
        vae=DVAEConfig(kl_warmup=0.5, code_usage=1.0), text=TextConfig(caption_dropout=0.2)
    )
    again = BundleConfig.from_dict(json.loads(json.dumps(trained.to_dict())))
    assert again == trained and again.vae.architecture() == DVAEConfig()
    assert config_from_dict(DVAEConfig, {"n_hid": 32}, "vae") == DVAEConfig(n_hid=32)
    for name in DVAE_TRAINING:  # a file's value is bounded like any other field's
        assert name in FIELD_RANGES[DVAEConfig]
