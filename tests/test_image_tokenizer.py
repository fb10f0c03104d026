"""The three image tokenizers (dVAE, VQ, VQGAN) satisfy one ``ImageTokenizer`` protocol: the same
facts (image size, factor, grid, vocabulary) and a round trip picture -> ids -> picture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.config import DVAEConfig, VQGANConfig
from model.networks.dvae import DVAE
from model.networks.image_tokenizer import ImageTokenizer, check_token_grid
from model.networks.vq import VQVAE
from model.networks.vqgan import VQGAN
from tests.helpers import TINY_VQ

TINY_DVAE = DVAEConfig(image_size=32, n_groups=3, n_hid=8, n_blk_per_group=1, vocab_size=32)
TINY_VQGAN = VQGANConfig(
    resolution=16, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(4,),
    z_channels=32, embed_dim=8, n_embed=64,
)  # fmt: skip
TOKENIZERS = {
    "dvae": lambda: DVAE(TINY_DVAE),
    "vq": lambda: VQVAE(TINY_VQ),
    "vqgan": lambda: VQGAN(TINY_VQGAN),
}


def grid_of(tokenizer: ImageTokenizer) -> tuple[int, int]:
    """What a caller typed against the protocol reads, whichever tokenizer it is given."""
    return tokenizer.grid, tokenizer.image_size // tokenizer.factor


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_each_image_tokenizer_satisfies_the_protocol(kind):
    torch.manual_seed(0)
    tokenizer = TOKENIZERS[kind]().eval()
    assert isinstance(tokenizer, ImageTokenizer)
    grid, computed = grid_of(tokenizer)
    assert grid == computed == tokenizer.image_size // tokenizer.factor
    images = torch.rand(2, 3, tokenizer.image_size, tokenizer.image_size)
    tokens = tokenizer.encode(images)
    assert tokens.shape == (2, grid, grid)
    check_token_grid(tokens, tokenizer.vocab_size)  # integer ids in [0, vocab_size)
    decoded = tokenizer.decode(tokens)
    assert decoded.shape == images.shape
    assert 0 <= float(decoded.min()) and float(decoded.max()) <= 1


def test_other_modules_are_not_image_tokenizers():
    assert not isinstance(nn.Linear(2, 2), ImageTokenizer)
    assert not isinstance(object(), ImageTokenizer)


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_a_token_outside_the_vocabulary_is_refused_by_each(kind):
    tokenizer = TOKENIZERS[kind]().eval()
    tokens = torch.full((1, tokenizer.grid, tokenizer.grid), tokenizer.vocab_size)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, "):
        tokenizer.decode(tokens)
