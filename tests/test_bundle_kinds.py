"""model.bundle.kinds: one registry entry for every kind a bundle's config may name."""

from model.bundle import kinds
from model.bundle.format import default_bundle_path
from model.bundle.io import read_config
from model.config import TEXT_KINDS, TRANSFORMER_KINDS, VAE_KINDS


def test_every_kind_a_config_may_name_has_a_builder_and_a_reader():
    assert VAE_KINDS.keys() == kinds.VAE_BUILDERS.keys()
    assert TRANSFORMER_KINDS.keys() == kinds.TRANSFORMER_BUILDERS.keys()
    assert TEXT_KINDS.keys() == kinds.TEXT_READERS.keys()


def test_the_default_bundle_is_built_for_real_with_its_attention_tables():
    config = read_config(default_bundle_path())
    assert kinds.assigned_prefixes(config) == set()
    assert kinds.has_attention_tables(config)
    shapes = kinds.build_models(config, device="meta")
    assert type(shapes["vae"]) is type(kinds.build_vae(config.vae))
    assert type(shapes["transformer"]).__name__ == "Transformer"
    assert kinds.tokenizer_class(config).__name__ == "CaptionTokenizer"
