"""The single-file model bundle (``*.dalle.safetensors``, docs/DESIGN.md §3).

One safetensors file holds every weight and everything needed to rebuild the models around them,
as nanoGPT's checkpoints carry their ``model_args``:

    tensors    vae.*, transformer.*, reranker.* (optional): each model's state_dict; vae.* is
               the image tokenizer
    metadata   format     "dalle-studio/1"
               config     BundleConfig as JSON; config.text.text_len is the tokenizer's text_len.
                          Each section's "kind" says what it builds; absent, it is the product's
                          own (as in every bundle written before kinds existed):
                            vae.kind          "dvae" (absent), "vq" (model/networks/vq.py) or
                                              "vqgan" (model/networks/vqgan.py: DALL·E Mega's f16
                                              VQGAN)
                            text.kind         "bpe" (absent: model/tokenizers/text.py), "bart"
                                              (model/tokenizers/bart_text.py: BART's BPE, pad id 1)
                                              or "yttm" (model/tokenizers/yttm_text.py: ruDALL-E's
                                              BPE)
                            transformer.kind  "dalle" (absent: model/networks/transformer.py) or
                                              "bart" (model/networks/bart.py: DALL·E Mega / Mini)
               tokenizer  the caption tokenizer as JSON: ``tokenizers``' for "bpe",
                          ``BartTokenizer.to_json`` (vocab, merges, text_len) for "bart",
                          ``RudalleTokenizer.to_json`` for "yttm"
               card       JSON: training data, steps, metrics, example captions; an imported
                          model's sources, licence and input hashes

No pickle anywhere. ``load`` refuses a bundle that is truncated, is not safetensors, has an
unknown format, missing metadata, an invalid config, missing or extra tensors, wrong shapes or
non-finite weights, with a ``BundleError`` naming the file and the problem. Structural checks run on
the header alone, before any weight is read; ``read_card`` and ``read_config`` read only the header.

A bundle is untrusted input, so nothing is allocated on its word: the header is bounded in size,
tensor count and nesting; every config field is typed and bounded (``model.config.FIELD_RANGES``);
the models are first built on the meta device, where the stored shapes are compared with theirs
without a byte of weights; and the attention tables a config asks for must be justified by the
file's size. Then the memory the load needs is estimated from the header (the stored tensors, the
models built around them, working space) and a load that cannot fit is refused in one line rather
than swapping the machine. Only then are the weights read (as much memory as the file holds).

Imported models are large (DALL·E Mega: 2.6B parameters, 5.2 GB in bf16), so the "bart" and
"vqgan" kinds are built on the meta device and take the file's tensors themselves
(``load_state_dict(assign=True)``), in the dtype they were stored in (fp32, bf16 or fp16, one per
model): their weights are in memory once. The product's own models are small and built as before
(our transformer's attention tables are not in the file) and their weights copied in.

The package, by what it does (everything below is importable from ``model.bundle``):

    format   the safetensors header read and bounded, the metadata's format, tensor names and
             shapes against the expected ones, where the embedded default lives; ``BundleError``
    kinds    the registry of kinds: each kind's builder, whether it is loaded by assignment, its
             attention tables, its caption tokenizer; the memory a load needs
    checks   the config's parts against each other and the tokenizer, stored dtypes, the
             attention-table budget, memory against what the machine has
    io       ``Bundle``, ``load``, ``save``, ``read_tensors``, ``read_card``, ``read_config``
"""

from model.bundle.checks import config_problems
from model.bundle.format import (
    ASSIGNED_DTYPES,
    DEFAULT_BUNDLE_NAME,
    DTYPE_BYTES,
    FLOAT_DTYPES,
    FORMAT,
    MAX_HEADER_BYTES,
    MAX_RANK,
    MAX_TENSORS,
    METADATA_KEYS,
    MIN_TABLE_BUDGET,
    NAMES_SHOWN,
    PREFIXES,
    SUFFIX,
    TORCH_DTYPES,
    BundleError,
    Header,
    TensorEntry,
    check_tensors,
    default_bundle_path,
    parse_json,
    read_header,
)
from model.bundle.io import (
    FINITE_CHUNK,
    Bundle,
    all_finite,
    load,
    read_card,
    read_config,
    read_tensors,
    save,
)
from model.bundle.kinds import (
    build_model,
    build_models,
    build_transformer,
    build_vae,
    memory_to_load,
)

__all__ = [
    "ASSIGNED_DTYPES",
    "DEFAULT_BUNDLE_NAME",
    "DTYPE_BYTES",
    "FINITE_CHUNK",
    "FLOAT_DTYPES",
    "FORMAT",
    "MAX_HEADER_BYTES",
    "MAX_RANK",
    "MAX_TENSORS",
    "METADATA_KEYS",
    "MIN_TABLE_BUDGET",
    "NAMES_SHOWN",
    "PREFIXES",
    "SUFFIX",
    "TORCH_DTYPES",
    "Bundle",
    "BundleError",
    "Header",
    "TensorEntry",
    "all_finite",
    "build_model",
    "build_models",
    "build_transformer",
    "build_vae",
    "check_tensors",
    "config_problems",
    "default_bundle_path",
    "load",
    "memory_to_load",
    "parse_json",
    "read_card",
    "read_config",
    "read_header",
    "read_tensors",
    "save",
]
