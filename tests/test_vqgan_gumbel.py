"""ruDALL-E's Sber gumbel-f8 VQGAN: ``model/networks/vqgan.py`` with ``quantize="gumbel"`` and its
Lightning checkpoint reader ``model/importers/rudalle_vqgan.py``.

References, at a tiny size with random weights, in float32:

- taming's own ``Encoder``/``Decoder`` (taming-transformers 0.0.1, installed with --no-deps) with a
  GumbelQuantize: taming's own class where the installed taming has it (0.0.1 does not; later
  taming has ``taming.modules.vqvae.quantize.GumbelQuantize``), else the two modules its
  constructor builds, ``proj`` and ``embed``, under the same names. Taming's forward adds Gumbel
  noise even in eval mode, so its tokens are compared as ruDALL-E takes them: the argmax of
  ``proj``'s logits; its decode is ``get_codebook_entry``'s one-hot product with ``embed``.
- rudalle 1.1.3's own ``VQGanGumbelVAE`` (``rudalle/vae/model.py``, run alone: the package's
  ``__init__`` pulls in transformers, cv2 and a Hugging Face download helper that current
  huggingface_hub lacks, so the packages are stubbed; its DWT decoder, which needs PyWavelets,
  is stubbed too; einops, when missing, by the two patterns the file uses).
  ``get_codebook_indices(img, disable_gumbel_softmax=True)`` (what rudalle's ImagePrompts calls)
  and ``decode``.

Checkpoints are written in the format Lightning 1.x writes (its ``dump_checkpoint``): epoch,
global_step, version, the model's ``state_dict`` with the GAN loss's weights, callback states
keyed by the ``ModelCheckpoint`` class (Lightning 1.0 to 1.4), two Adam optimizer states (taming
trains the autoencoder and the discriminator apart), lr_schedulers and hyper-parameters as an
omegaconf DictConfig (the real one where omegaconf is installed; otherwise objects of the same
qualified names and pickled structure). Lightning is not installed: its classes are stand-ins
under their real qualified names, which is all a pickle records of them.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import math
import os
import pickle
import sys
import types
import typing
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.config import VQGANConfig
from model.importers import rudalle_vqgan
from model.importers.rudalle_vqgan import SBER_GUMBEL_F8, vqgan_from_lightning
from model.networks import vqgan as vqgan_module
from model.networks.vqgan import VQGAN, describe, from_taming, parameter_shapes
from tests.test_vqgan import one_line_error, randomise_

# the Sber config scaled down: the same four levels (f8), two blocks a level, attention on the
# last level only (Sber: 32 px of 256), z_channels equal to embed_dim (taming's proj reads
# z_channels but is fed embed_dim: they must be equal)
TINY = VQGANConfig(
    resolution=32,
    ch=32,
    ch_mult=(1, 1, 2, 4),
    num_res_blocks=2,
    attn_resolutions=(4,),
    z_channels=64,
    embed_dim=64,
    n_embed=128,
    quantize="gumbel",
    value_range="-1,1",
)
TOLERANCE = 1e-5


def images(batch: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def ddconfig(config: VQGANConfig) -> dict:
    """taming's ddconfig for ``config`` (the keys of rudalle's vqgan.gumbelf8-sber.config.yml)."""
    return dict(
        double_z=False,
        z_channels=config.z_channels,
        resolution=config.resolution,
        in_channels=config.in_channels,
        out_ch=config.in_channels,
        ch=config.ch,
        ch_mult=list(config.ch_mult),
        num_res_blocks=config.num_res_blocks,
        attn_resolutions=list(config.attn_resolutions),
        dropout=0.0,
    )


def spread_decoder_(module: nn.Module) -> None:
    """Scale the decoder's last conv and shift its red and blue outputs so that most pixels (over
    90% with these seeds) fall inside (-1, 1), where the clamp hides no difference, and some
    outside, where it must act. Pixels of about unit size keep float32's rounding (the two
    implementations sum in other orders) well under TOLERANCE."""
    with torch.no_grad():
        module.decoder.conv_out.weight.mul_(0.4)
        module.decoder.conv_out.bias.copy_(torch.tensor([0.8, 0.0, -0.8]))


def check_range(raw: torch.Tensor) -> None:
    """The reference's unclamped pixels exercise both the comparison and the clamp."""
    inside = ((raw > -1) & (raw < 1)).float().mean()
    assert inside > 0.5, f"only {inside:.0%} of pixels inside (-1, 1): the comparison is weak"
    assert inside < 0.99, f"{inside:.0%} of pixels inside (-1, 1): the clamp is not exercised"


# -- taming ---------------------------------------------------------------------------------------


class TamingGumbelVQ(nn.Module):
    """taming's GumbelVQ at inference from taming's own modules (``taming/models/vqgan.py`` itself
    imports Lightning), with the attribute names of the checkpoint."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        model = pytest.importorskip("taming.modules.diffusionmodules.model")
        quantize = pytest.importorskip("taming.modules.vqvae.quantize")
        self.encoder = model.Encoder(**ddconfig(config))
        self.decoder = model.Decoder(**ddconfig(config))
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        gumbel = getattr(quantize, "GumbelQuantize", None)
        if gumbel is not None:  # taming after 0.0.1: GumbelVQ's own construction
            self.quantize = gumbel(config.z_channels, config.embed_dim, n_embed=config.n_embed)
        else:  # what GumbelQuantize.__init__ builds, under its names
            self.quantize = nn.Module()
            self.quantize.proj = nn.Conv2d(config.z_channels, config.n_embed, 1)
            self.quantize.embed = nn.Embedding(config.n_embed, config.embed_dim)
        self.n_embed = config.n_embed

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, G, G): the argmax of proj's logits on quant_conv's output."""
        return self.quantize.proj(self.quant_conv(self.encoder(x))).argmax(dim=1)

    def pixels(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unclamped decoder output: get_codebook_entry's one-hot product, then decode."""
        one_hot = F.one_hot(tokens, num_classes=self.n_embed).permute(0, 3, 1, 2).float()
        z_q = torch.einsum("bnhw,nd->bdhw", one_hot, self.quantize.embed.weight)
        return self.decoder(self.post_quant_conv(z_q))


def taming_reference(seed: int = 3, config: VQGANConfig = TINY) -> TamingGumbelVQ:
    torch.manual_seed(seed)
    reference = randomise_(TamingGumbelVQ(config), seed=seed).eval()
    spread_decoder_(reference)
    return reference


def test_parity_with_taming():
    taming = taming_reference()
    state = taming.state_dict()
    assert {k for k in state if k.startswith("quantize.")} == {
        "quantize.proj.weight",
        "quantize.proj.bias",
        "quantize.embed.weight",
    }
    ours = VQGAN.load(TINY, from_taming(state, TINY)).eval()
    x = images()
    with torch.no_grad():
        reference_tokens = taming.tokens(2 * x - 1)
    tokens = ours.encode(x)
    assert tokens.shape == (4, 4, 4) and tokens.dtype == torch.long
    assert len(reference_tokens.unique()) > 8  # the argmax spreads over the codes
    assert torch.equal(tokens, reference_tokens)
    with torch.no_grad():
        reference = taming.pixels(tokens)
        raw = ours.pixels(ours.quantize.lookup(tokens))
    torch.testing.assert_close(raw, reference, atol=TOLERANCE, rtol=0)
    check_range(reference)
    decoded = ours.decode(tokens)
    expected = (reference.clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(decoded, expected, atol=TOLERANCE, rtol=0)


# -- rudalle ---------------------------------------------------------------------------------------


def _einops_stand_in() -> types.ModuleType:
    """einops.rearrange for the two patterns rudalle/vae/model.py uses, when einops is missing."""

    def rearrange(tensor: torch.Tensor, pattern: str, **sizes: int) -> torch.Tensor:
        if pattern == "b h w -> b (h w)":
            return tensor.reshape(tensor.shape[0], -1)
        if pattern == "b (h w) c -> b c h w":
            b, n, c = tensor.shape
            h = sizes["h"]
            return tensor.view(b, h, n // h, c).permute(0, 3, 1, 2)
        raise NotImplementedError(pattern)

    module = types.ModuleType("einops")
    module.rearrange = rearrange
    return module


@pytest.fixture(scope="module")
def rudalle_vae_module():
    return load_rudalle_vae_module()


def load_rudalle_vae_module() -> types.ModuleType:
    """rudalle 1.1.3's ``rudalle/vae/model.py``, run alone (see the module docstring)."""
    pytest.importorskip("taming.modules.diffusionmodules.model")
    spec = importlib.util.find_spec("rudalle")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rudalle is not installed (pip install --no-deps rudalle==1.1.3)")
    folder = Path(spec.submodule_search_locations[0]) / "vae"
    stubs = {}
    for name, path in (("rudalle", folder.parent), ("rudalle.vae", folder)):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        stubs[name] = package
    dwt = types.ModuleType("rudalle.vae.decoder_dwt")
    dwt.DecoderDWT = None  # the 512 px variant (PyWavelets); never built here
    stubs["rudalle.vae.decoder_dwt"] = dwt
    if importlib.util.find_spec("einops") is None:
        stubs["einops"] = _einops_stand_in()
    with pytest.MonkeyPatch.context() as patch:
        for name, module in stubs.items():
            patch.setitem(sys.modules, name, module)
        module_spec = importlib.util.spec_from_file_location(
            "rudalle.vae.model", folder / "model.py"
        )
        module = importlib.util.module_from_spec(module_spec)
        patch.setitem(sys.modules, "rudalle.vae.model", module)
        module_spec.loader.exec_module(module)
    return module


class AttrDict(dict):
    """What OmegaConf gives rudalle: keys by attribute and by item (GumbelVQ does both)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def rudalle_vae(module: types.ModuleType, config: VQGANConfig, seed: int = 5):
    params = AttrDict(
        ddconfig=AttrDict(ddconfig(config)),
        n_embed=config.n_embed,
        embed_dim=config.embed_dim,
        kl_weight=1e-8,
    )
    torch.manual_seed(seed)
    vae = module.VQGanGumbelVAE(AttrDict(model=AttrDict(params=params)))
    randomise_(vae, seed=seed)
    spread_decoder_(vae.model)
    return vae.eval()


def test_parity_with_rudalle(rudalle_vae_module):
    vae = rudalle_vae(rudalle_vae_module, TINY)
    # rudalle's get_vae: checkpoint["state_dict"] into vae.model, strict=False
    checkpoint = {
        "state_dict": {**vae.model.state_dict(), "loss.discriminator.main.0.weight": torch.ones(1)}
    }
    ours = VQGAN.load(TINY, from_taming(checkpoint, TINY)).eval()
    x = images()
    theirs_tokens = vae.get_codebook_indices(x, disable_gumbel_softmax=True)  # (B, G*G)
    tokens = ours.encode(x)
    assert len(theirs_tokens.unique()) > 8
    assert torch.equal(tokens.view(4, -1), theirs_tokens)
    with torch.no_grad():
        theirs = vae.decode(theirs_tokens)  # (B, 3, S, S) in [0, 1]
        z = vae.model.quantize.embed(tokens).permute(0, 3, 1, 2)
        theirs_raw = vae.model.decode(z)
    check_range(theirs_raw)
    ours_pixels = ours.decode(tokens)
    torch.testing.assert_close(ours_pixels, theirs, atol=TOLERANCE, rtol=0)
    with torch.no_grad():
        ours_raw = ours.pixels(ours.quantize.lookup(tokens))
    torch.testing.assert_close(ours_raw, theirs_raw, atol=TOLERANCE, rtol=0)
    # rudalle's default (gumbel noise on) samples: not what an image prompt uses
    torch.manual_seed(0)
    noisy = vae.get_codebook_indices(x)
    assert not torch.equal(noisy, theirs_tokens)


@pytest.mark.slow
def test_parity_with_rudalle_at_sber_size(rudalle_vae_module):
    """The released config (256 px, 32x32 tokens of 8192, attention over 1024 positions), random
    weights: every token and every pixel."""
    vae = rudalle_vae(rudalle_vae_module, SBER_GUMBEL_F8, seed=11)
    state = from_taming({"state_dict": vae.model.state_dict()}, SBER_GUMBEL_F8)
    ours = VQGAN.load(SBER_GUMBEL_F8, state).eval()
    x = images(1, 256, seed=2)
    theirs_tokens = vae.get_codebook_indices(x, disable_gumbel_softmax=True)  # (1, 1024)
    tokens = ours.encode(x)
    assert tokens.shape == (1, 32, 32) and len(theirs_tokens.unique()) > 32
    assert torch.equal(tokens.view(1, -1), theirs_tokens)
    with torch.no_grad():
        theirs_raw = vae.model.decode(vae.model.quantize.embed(tokens).permute(0, 3, 1, 2))
        theirs = vae.decode(theirs_tokens)
    check_range(theirs_raw)
    torch.testing.assert_close(ours.decode(tokens), theirs, atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_parameter_names_and_counts_at_sber_size_match_rudalles(rudalle_vae_module):
    """rudalle's VQGanGumbelVAE at the Sber config, built on the meta device: our names and
    shapes are its GumbelVQ's, so the released checkpoint loads by name."""
    with torch.device("meta"):
        vae = rudalle_vae_module.VQGanGumbelVAE(
            AttrDict(
                model=AttrDict(
                    params=AttrDict(
                        ddconfig=AttrDict(ddconfig(SBER_GUMBEL_F8)),
                        n_embed=8192,
                        embed_dim=256,
                        kl_weight=1e-8,
                    )
                )
            )
        )
    theirs = {name: tuple(p.shape) for name, p in vae.model.state_dict().items()}
    assert theirs == parameter_shapes(SBER_GUMBEL_F8)


# -- the module -----------------------------------------------------------------------------------


def tiny_vqgan(seed: int = 0, config: VQGANConfig = TINY) -> VQGAN:
    return randomise_(VQGAN(config), seed).eval()


def test_gumbel_parameters_are_named_as_tamings_gumbel_vq():
    shapes = parameter_shapes(SBER_GUMBEL_F8)
    assert shapes["quantize.proj.weight"] == (8192, 256, 1, 1)
    assert shapes["quantize.proj.bias"] == (8192,)
    assert shapes["quantize.embed.weight"] == (8192, 256)
    assert "quantize.embedding.weight" not in shapes
    assert "encoder.down.3.attn.1.q.weight" in shapes  # attention at 32 px = level 3
    assert "encoder.down.2.attn.0.q.weight" not in shapes
    assert "encoder.down.3.downsample.conv.weight" not in shapes
    encoder = parameter_shapes(SBER_GUMBEL_F8, "encoder")
    decoder = parameter_shapes(SBER_GUMBEL_F8, "decoder")
    assert not set(encoder) & set(decoder)  # proj only encodes, embed only decodes
    assert set(encoder) | set(decoder) == set(shapes)
    assert "quantize.proj.weight" in encoder and "quantize.embed.weight" in decoder

    def count(prefix: str) -> int:
        return sum(math.prod(s) for name, s in shapes.items() if name.startswith(prefix))

    # taming 0.0.1's Encoder and Decoder at the Sber config (importers.md 2.6)
    assert (count("encoder."), count("decoder.")) == (26_345_728, 38_316_163)
    proj, embed, quant_conv = 8192 * 256 + 8192, 8192 * 256, 256 * 256 + 256
    assert count("") == 26_345_728 + 38_316_163 + proj + embed + 2 * quant_conv  # 69.0M
    assert SBER_GUMBEL_F8.grid == 32 and SBER_GUMBEL_F8.factor == 8
    assert "(gumbel)" in describe(SBER_GUMBEL_F8) and "(gumbel)" not in describe(VQGANConfig())


def test_codes_are_the_argmax_of_proj_and_decode_reads_embed():
    vq = tiny_vqgan()
    z = vq.latent(images()).detach()  # (4, 64, 4, 4)
    logits = torch.einsum("bdhw,kd->bkhw", z, vq.quantize.proj.weight[:, :, 0, 0].detach())
    logits = logits + vq.quantize.proj.bias.detach().view(1, -1, 1, 1)
    assert torch.equal(vq.quantize.codes(z), logits.argmax(dim=1))
    tokens = vq.encode(images())
    with torch.no_grad():
        table = vq.quantize.embed.weight[tokens].permute(0, 3, 1, 2)  # (B, D, G, G)
        expected = ((vq.pixels(table) + 1) / 2).clamp(0, 1)
    assert torch.equal(vq.decode(tokens), expected)
    # the decoder reads embed, not proj: changing proj leaves decoding alone
    with torch.no_grad():
        vq.quantize.proj.weight.mul_(-1)
    assert torch.equal(vq.decode(tokens), expected)
    assert not torch.equal(vq.encode(images()), tokens)


def test_codes_split_into_batches_give_the_same_tokens(monkeypatch):
    vq = tiny_vqgan()
    x = images(5)
    whole = vq.encode(x)
    monkeypatch.setattr(vqgan_module, "QUANTIZE_ROWS", 16)  # one 4x4 image at a time
    assert torch.equal(vq.encode(x), whole)
    monkeypatch.setattr(vqgan_module, "QUANTIZE_ROWS", 40)  # two at a time, then one
    assert torch.equal(vq.encode(x), whole)


def test_encode_decode_shapes_range_and_bad_input():
    vq = tiny_vqgan()
    assert (vq.image_size, vq.factor, vq.grid, vq.vocab_size) == (32, 8, 4, 128)
    tokens = vq.encode(images(2, 64))  # fully convolutional: any multiple of the factor
    assert tokens.shape == (2, 8, 8) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 128
    decoded = vq.decode(tokens)
    assert decoded.shape == (2, 3, 64, 64) and decoded.dtype == torch.float32
    assert 0 <= float(decoded.min()) and float(decoded.max()) <= 1
    with pytest.raises(ValueError, match=r"\[0, 128\)"):
        vq.decode(torch.full((1, 4, 4), 128))
    with pytest.raises(ValueError, match="multiples"):
        vq.encode(images(1, 30))


def test_from_taming_checks_gumbel_names():
    state = tiny_vqgan().state_dict()
    assert from_taming(state, TINY).keys() == state.keys()
    vq_config = dataclasses.replace(TINY, quantize="vq")
    with pytest.raises(ValueError) as excinfo:
        from_taming(state, vq_config)
    one_line_error(excinfo, "lacks", "quantize.embedding.weight")
    renamed = {k.replace("quantize.embed.", "quantize.embedding."): v for k, v in state.items()}
    with pytest.raises(ValueError) as excinfo:
        from_taming(renamed, TINY)
    one_line_error(excinfo, "lacks", "quantize.embed.weight")
    decoder = from_taming(state, TINY, part="decoder")
    assert "quantize.embed.weight" in decoder and "quantize.proj.weight" not in decoder


# -- Lightning checkpoints -------------------------------------------------------------------------


def _fake_module(patch: pytest.MonkeyPatch, name: str, **members) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in members.items():
        if isinstance(value, type):
            value.__module__, value.__qualname__ = name, key
        setattr(module, key, value)
    patch.setitem(sys.modules, name, module)
    return module


def fake_lightning(patch: pytest.MonkeyPatch) -> type:
    """A stand-in for ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``, pickled
    under that name."""

    class ModelCheckpoint:
        pass

    _fake_module(patch, "pytorch_lightning")
    _fake_module(patch, "pytorch_lightning.callbacks")
    _fake_module(
        patch, "pytorch_lightning.callbacks.model_checkpoint", ModelCheckpoint=ModelCheckpoint
    )
    return ModelCheckpoint


def _omegaconf_hparams(patch: pytest.MonkeyPatch, values: dict) -> tuple[object, type]:
    """(hyper-parameters, their type) as a DictConfig: omegaconf's own where installed, else
    objects pickled as omegaconf 2.1 pickles a DictConfig (pickletools on the real one: the same
    qualified names, each object as NEWOBJ + BUILD of its ``__dict__``, the resolver cache as a
    ``defaultdict(dict)``, types as references)."""
    try:
        from omegaconf import OmegaConf

        config = OmegaConf.create(values)
        return config, type(config)
    except ImportError:
        pass

    class Metadata:
        pass

    class ContainerMetadata(Metadata):
        pass

    class DictConfig:
        pass

    class ListConfig:
        pass

    class AnyNode:
        pass

    _fake_module(patch, "omegaconf")
    _fake_module(patch, "omegaconf.base", Metadata=Metadata, ContainerMetadata=ContainerMetadata)
    _fake_module(patch, "omegaconf.dictconfig", DictConfig=DictConfig)
    _fake_module(patch, "omegaconf.listconfig", ListConfig=ListConfig)
    _fake_module(patch, "omegaconf.nodes", AnyNode=AnyNode)

    def metadata(cls, key, object_type):
        meta = cls()
        meta.__dict__.update(
            ref_type=typing.Any,
            object_type=object_type,
            optional=True,
            key=key,
            flags={},
            flags_root=False,
            resolver_cache=collections.defaultdict(dict),
        )
        if cls is ContainerMetadata:
            meta.__dict__.update(key_type=typing.Any, element_type=typing.Any)
        return meta

    def node(value, key, parent):
        if isinstance(value, dict):
            out = DictConfig()
            out.__dict__.update(
                _metadata=metadata(ContainerMetadata, key, dict), _parent=parent, _content={}
            )
            out._content = {k: node(v, k, out) for k, v in value.items()}
        elif isinstance(value, list):
            out = ListConfig()
            out.__dict__.update(
                _metadata=metadata(ContainerMetadata, key, list), _parent=parent, _content=[]
            )
            out._content = [node(v, i, out) for i, v in enumerate(value)]
        else:
            out = AnyNode()
            out.__dict__.update(_metadata=metadata(Metadata, key, None), _parent=parent, _val=value)
        return out

    return node(values, None, None), DictConfig


def adam_state(parameters: list[torch.Tensor], seed: int) -> dict:
    """An Adam ``state_dict()`` after some steps, as torch.optim writes it."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "state": {
            i: {
                "step": torch.tensor(1000.0),
                "exp_avg": torch.randn(p.shape, generator=generator) * 1e-3,
                "exp_avg_sq": torch.rand(p.shape, generator=generator) * 1e-6,
            }
            for i, p in enumerate(parameters)
        },
        "param_groups": [
            {
                "lr": 4.5e-6,
                "betas": (0.5, 0.9),  # taming's VQModel.configure_optimizers
                "eps": 1e-8,
                "weight_decay": 0,
                "amsgrad": False,
                "params": list(range(len(parameters))),
            }
        ],
    }


def lightning_checkpoint(
    patch: pytest.MonkeyPatch, state: dict[str, torch.Tensor], era: str = "1.4"
) -> dict:
    """The dict Lightning's ``dump_checkpoint`` writes for taming's GumbelVQ: the model's
    ``state_dict`` (an OrderedDict with ``_metadata``) plus the GAN loss's discriminator, the
    callbacks, two Adam states, lr_schedulers and hyper-parameters. ``era`` "1.4": callback
    states keyed by the callback class and omegaconf hyper-parameters, which weights_only
    refuses; "1.6": keyed by string, plain hyper-parameters, loop states, which it accepts."""
    generator = torch.Generator().manual_seed(9)
    discriminator = {  # taming's NLayerDiscriminator, first and last convs
        "loss.discriminator.main.0.weight": torch.randn(64, 3, 4, 4, generator=generator),
        "loss.discriminator.main.0.bias": torch.randn(64, generator=generator),
        "loss.discriminator.main.11.weight": torch.randn(1, 512, 4, 4, generator=generator),
        "loss.perceptual_loss.lin0.model.1.weight": torch.rand(1, 64, 1, 1, generator=generator),
        "loss.logvar": torch.zeros(()),
    }
    state_dict = collections.OrderedDict({**state, **discriminator})
    state_dict._metadata = collections.OrderedDict([("", {"version": 1})])
    model_parameters = [t for k, t in state.items() if not k.startswith("loss.")]
    hparams = {"ddconfig": ddconfig(TINY), "n_embed": TINY.n_embed, "embed_dim": TINY.embed_dim}
    checkpoint = {
        "epoch": 3,
        "global_step": 120_000,
        "pytorch-lightning_version": "1.4.9" if era == "1.4" else "1.6.5",
        "state_dict": state_dict,
        "optimizer_states": [
            adam_state(model_parameters, 1),
            adam_state(list(discriminator.values()), 2),
        ],
        "lr_schedulers": [],
    }
    best = {
        "monitor": "val/rec_loss",
        "best_model_score": torch.tensor(0.0711),
        "best_model_path": "logs/2021-10-01T12-00-00_sber_gumbel/checkpoints/epoch=000003.ckpt",
        "current_score": torch.tensor(0.0723),
        "dirpath": "logs/2021-10-01T12-00-00_sber_gumbel/checkpoints",
    }
    if era == "1.4":
        ModelCheckpoint = fake_lightning(patch)
        hyper_parameters, hparams_type = _omegaconf_hparams(patch, hparams)
        checkpoint["callbacks"] = {ModelCheckpoint: best}
        checkpoint["hparams_name"] = "kwargs"
        checkpoint["hyper_parameters"] = hyper_parameters
        checkpoint["hparams_type"] = hparams_type
    else:
        key = "ModelCheckpoint{'monitor': 'val/rec_loss', 'mode': 'min'}"
        checkpoint["callbacks"] = {key: {**best, "best_k_models": {}, "kth_value": torch.inf}}
        checkpoint["loops"] = {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": 3}}}
        checkpoint["hparams_name"] = "kwargs"
        checkpoint["hyper_parameters"] = hparams
    return checkpoint


def write_lightning(tmp_path: Path, state: dict, era: str = "1.4", legacy: bool = False) -> Path:
    path = tmp_path / "vqgan.gumbelf8-sber.model.ckpt"
    with pytest.MonkeyPatch.context() as patch:
        torch.save(
            lightning_checkpoint(patch, state, era), path, _use_new_zipfile_serialization=not legacy
        )
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_lightning_1_4_checkpoint_loads_through_the_allow_list(tmp_path, legacy, monkeypatch):
    taming = taming_reference(seed=7)
    source = taming.state_dict()
    path = write_lightning(tmp_path, source, legacy=legacy)
    # what this checkpoint holds beside tensors is refused by torch's weights-only reader
    with pytest.raises(pickle.UnpicklingError, match="ModelCheckpoint|DictConfig"):
        torch.load(path, weights_only=True)
    calls = []
    real = rudalle_vqgan.load_modules
    monkeypatch.setattr(
        rudalle_vqgan, "load_modules", lambda *a, **k: calls.append(a[0]) or real(*a, **k)
    )
    config, state = vqgan_from_lightning(path, expected=TINY)
    assert calls == [path]  # the allow-list reader read it
    assert config == TINY
    assert list(state) == list(source)  # loss.* dropped, order kept
    for name, tensor in source.items():
        assert state[name].dtype == torch.float32 and torch.equal(state[name], tensor), name
    ours = VQGAN.load(config, state)
    x = images()
    with torch.no_grad():
        assert torch.equal(ours.encode(x), taming.tokens(2 * x - 1))


def test_lightning_1_6_checkpoint_loads_weights_only(tmp_path, monkeypatch):
    source = taming_reference(seed=8).state_dict()
    path = write_lightning(tmp_path, source, era="1.6")
    monkeypatch.setattr(rudalle_vqgan, "load_modules", None)  # must not be needed
    config, state = vqgan_from_lightning(path, expected=TINY)
    assert config == TINY and state.keys() == source.keys()
    assert all(torch.equal(state[k], v) for k, v in source.items())


def test_shapes_give_the_config_and_the_sber_check_names_the_difference(tmp_path):
    source = tiny_vqgan(seed=2).state_dict()
    path = write_lightning(tmp_path, source, era="1.6")
    config, _ = vqgan_from_lightning(path, expected=None)  # read off the shapes, at 256 px
    assert config == dataclasses.replace(TINY, resolution=256, attn_resolutions=(32,))
    with pytest.raises(ValueError) as excinfo:
        vqgan_from_lightning(path)  # the Sber VQGAN is expected
    one_line_error(excinfo, str(path), "not the Sber gumbel-f8", "ch is 32, expected 128")
    with pytest.raises(ValueError) as excinfo:
        vqgan_from_lightning(path, dataclasses.replace(TINY, attn_resolutions=(8,)))
    one_line_error(excinfo, "attn_resolutions is (4,), expected (8,)")
    with pytest.raises(ValueError) as excinfo:
        vqgan_from_lightning(path, dataclasses.replace(TINY, quantize="vq"))
    one_line_error(excinfo, "quantize is gumbel, expected vq")


def test_a_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    source = tiny_vqgan().state_dict()
    for where in ("hyper_parameters", "callbacks"):
        path = tmp_path / f"{where}.ckpt"
        checkpoint = {"epoch": 1, "global_step": 10, "state_dict": source, where: Exploit()}
        torch.save(checkpoint, path)
        with pytest.raises(ValueError) as excinfo:
            vqgan_from_lightning(path, expected=TINY)
        one_line_error(excinfo, str(path), "refused", "system", "does not allow")
        assert not marker.exists()


def test_an_allowed_class_called_with_arguments_is_refused(tmp_path):
    """A stub stands for a class; a file that calls one (REDUCE) is not a checkpoint."""

    path = tmp_path / "call.ckpt"
    with pytest.MonkeyPatch.context() as patch:
        model_checkpoint = fake_lightning(patch)

        class Caller:
            def __reduce__(self):
                return (model_checkpoint, ("rm -rf /",))

        torch.save({"state_dict": tiny_vqgan().state_dict(), "callbacks": Caller()}, path)
    with pytest.raises(ValueError) as excinfo:
        vqgan_from_lightning(path, expected=TINY)
    one_line_error(excinfo, str(path), "refused")


def _damage(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "vqgan.gumbelf8-sber.model.ckpt"
    state = dict(tiny_vqgan().state_dict())
    if kind == "missing file":
        return tmp_path / "nothing.ckpt"
    if kind == "truncated":
        torch.save({"state_dict": state}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "bad storage":  # the directory intact, a tensor's bytes cut out
        torch.save({"state_dict": state}, path)
        data = bytearray(path.read_bytes())
        start = data.find(b"/data/0") + 200  # into the first storage's local header and bytes
        data[start : start + 64] = b"\xff" * 64
        path.write_bytes(bytes(data))
    elif kind == "bad pickle":  # a valid archive whose object pickle is garbage
        import zipfile

        torch.save({"state_dict": state}, path)
        with zipfile.ZipFile(path) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, b"\x80\x02}q\x00(X" if name.endswith("data.pkl") else data)
    elif kind == "not torch":
        path.write_bytes(b"version: 1\nmodel: vqgan\n" * 10)
    elif kind == "a list":
        torch.save([state], path)
    elif kind == "state_dict of strings":
        torch.save({"state_dict": {"encoder.conv_in.weight": "x"}}, path)
    elif kind == "vq VQGAN":
        renamed = {k.replace("quantize.embed.", "quantize.embedding."): v for k, v in state.items()}
        vq_state = {k: v for k, v in renamed.items() if not k.startswith("quantize.proj")}
        torch.save({"state_dict": vq_state}, path)
    elif kind == "transformer":
        torch.save({"transformer.layers.0.attention.query_key_value.weight": torch.zeros(3)}, path)
    elif kind == "dwt":
        torch.save(
            {
                "state_dict": {
                    **{f"model.{k}": v for k, v in state.items()},
                    "model.decoder.decoder.conv_out.weight": torch.zeros(12, 32, 3, 3),
                }
            },
            path,
        )
    elif kind == "missing tensor":
        del state["decoder.conv_out.bias"]
        torch.save({"state_dict": state}, path)
    elif kind == "wrong shape":
        state["post_quant_conv.weight"] = torch.zeros(64, 64, 3, 3)
        torch.save({"state_dict": state}, path)
    elif kind == "nan":
        state["decoder.mid.attn_1.q.weight"] = torch.full_like(
            state["decoder.mid.attn_1.q.weight"], float("nan")
        )
        torch.save({"state_dict": state}, path)
    elif kind == "integer tensor":
        state["quant_conv.bias"] = torch.zeros(64, dtype=torch.int64)
        torch.save({"state_dict": state}, path)
    return path


@pytest.mark.parametrize(
    "kind, words",
    [
        ("missing file", ["no such file"]),
        ("truncated", ["damaged zip archive"]),
        ("bad storage", ["damaged", "fails its CRC check"]),
        ("bad pickle", ["refused", "not a readable torch file"]),
        ("not torch", ["refused", "not a torch.save file"]),
        ("a list", ["holds a list", "not a Lightning checkpoint"]),
        ("state_dict of strings", ["not a dict of named tensors"]),
        ("vq VQGAN", ["nearest-code quantizer", "gumbel"]),
        ("transformer", ["ruDALL-E transformer", "vqgan.gumbelf8-sber.model.ckpt"]),
        ("dwt", ["DWT", "not supported"]),
        ("missing tensor", ["lacks", "decoder.conv_out.bias"]),
        ("wrong shape", ["post_quant_conv.weight", "(64, 64, 3, 3)", "(64, 64, 1, 1)"]),
        ("nan", ["decoder.mid.attn_1.q.weight", "NaN"]),
        ("integer tensor", ["quant_conv.bias", "not a float tensor"]),
    ],
)
def test_wrong_or_damaged_files_are_refused_in_one_line(tmp_path, kind, words):
    path = _damage(tmp_path, kind)
    with pytest.raises(ValueError) as excinfo:
        vqgan_from_lightning(path, expected=TINY)
    one_line_error(excinfo, str(path), *words)


def test_rudalle_wrapper_prefix_is_accepted(tmp_path):
    """rudalle's VQGanGumbelVAE holds GumbelVQ as ``model``: its own state dict's names."""
    source = tiny_vqgan(seed=4).state_dict()
    path = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.items()}}, path)
    _, state = vqgan_from_lightning(path, expected=TINY)
    assert all(torch.equal(state[k], v) for k, v in source.items())
