"""``dalle import openai-dvae``: OpenAI's pickled dVAE modules in, a dVAE file out, checked against
``dall_e`` 0.1's own Encoder and Decoder (installed in the test environment), and no pickle ever
run."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from model.bundle.tokenizer_files import load_image_tokenizer
from model.cli import main

dall_e = pytest.importorskip("dall_e")
from dall_e.decoder import Decoder  # noqa: E402
from dall_e.encoder import Encoder  # noqa: E402
from dall_e.utils import map_pixels  # noqa: E402


def released_pair(seed: int = 0):
    """``dall_e``'s modules at a tiny size with random weights and non-zero biases."""
    torch.manual_seed(seed)
    kwargs = {"n_blk_per_group": 1, "vocab_size": 32, "requires_grad": False}
    encoder = Encoder(n_hid=16, use_mixed_precision=False, **kwargs)
    decoder = Decoder(n_init=8, n_hid=16, use_mixed_precision=False, **kwargs)
    with torch.no_grad():
        for module in (encoder, decoder):
            for name, p in module.named_parameters():
                if name.endswith(".b"):
                    p.normal_(0, 0.1)
    return encoder, decoder


def save_pair(folder, legacy: bool = False):
    encoder, decoder = released_pair()
    paths = folder / "encoder.pkl", folder / "decoder.pkl"
    for module, path in zip((encoder, decoder), paths, strict=True):
        torch.save(module, path, _use_new_zipfile_serialization=not legacy)
    return encoder, decoder, paths


def run(*args) -> int:
    return main(["import", "openai-dvae", *map(str, args)])


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_imported_dvae_equals_dall_e_bit_for_bit(tmp_path, capsys, legacy):
    encoder, decoder, (enc_path, dec_path) = save_pair(tmp_path, legacy)
    out = tmp_path / "out" / "openai.safetensors"
    assert run("--encoder", enc_path, "--decoder", dec_path, "--out", out, "--image-size", 32) == 0
    vae, card = load_image_tokenizer(out)  # what `dalle train transformer --vae` reads
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(vae.logits(images), encoder(map_pixels(images)))
        tokens = vae.encode(images)
        onehot = torch.nn.functional.one_hot(tokens, 32).permute(0, 3, 1, 2).float()
        assert torch.equal(vae.decoder(onehot), decoder(onehot))
    assert vae.config.image_size == 32 and vae.config.vocab_size == 32
    files = card["imported"]["files"]
    for path in (enc_path, dec_path):
        assert files[path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "OpenAI" in card["imported"]["licence"]


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_malicious_pickle_is_refused_and_never_run(tmp_path, capsys, legacy):
    _, _, (enc_path, dec_path) = save_pair(tmp_path)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    torch.save({"w": Payload(marker)}, evil, _use_new_zipfile_serialization=not legacy)
    out = tmp_path / "out.safetensors"
    assert run("--encoder", evil, "--decoder", dec_path, "--out", out) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "refused" in error and "system, which this importer does not allow" in error
    assert not marker.exists() and not out.exists()


def test_every_wrong_input_is_one_line(tmp_path, capsys):
    _, _, (enc_path, dec_path) = save_pair(tmp_path)
    text = tmp_path / "notes.pkl"
    text.write_text("not a pickle")
    other = tmp_path / "other.pt"  # a state dict of some other model
    torch.save({"embed_tokens.weight": torch.zeros(4, 4)}, other)
    out = tmp_path / "x.safetensors"
    cases = [
        (("--encoder", tmp_path / "none.pkl", "--decoder", dec_path), "no such file"),
        (("--encoder", dec_path, "--decoder", enc_path), "swap --encoder and --decoder"),
        (("--encoder", text, "--decoder", dec_path), "not a torch.save file"),
        (("--encoder", other, "--decoder", dec_path), "not OpenAI's dVAE layout"),
        (
            ("--encoder", enc_path, "--decoder", dec_path, "--out", tmp_path / "x.bin"),
            ".safetensors",
        ),
    ]
    for args, words in cases:
        full = args if "--out" in args else (*args, "--out", out)
        assert run(*full) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert words in lines[-1], lines
        assert lines[-1].startswith("dalle import: error: ")
    assert not out.exists()
