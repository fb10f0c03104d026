"""``dalle import``: files a user downloaded, converted once into files the product reads.

``openai-dvae``: OpenAI's dVAE as a dVAE file; ``mega`` / ``mini``: DALL·E Mega or Mini (min-dalle's
files and dalle-mini's VQGAN) as a model bundle (``model/importers/dalle_mega.py``); ``rudalle``:
ruDALL-E Malevich v3 or Surrealist XL with the Sber VQGAN (``model/importers/rudalle_import.py``);
``realesrgan``: a Real-ESRGAN upscaler, ``.pth`` or ncnn (``model/importers/realesrgan.py``).

The product never reads a pickle at run time: each importer reads its sources here (an
allow-list unpickler, ``weights_only`` or msgpack), checks every name and shape, and writes one
safetensors file through the atomic writer; nothing is written when anything fails.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from model.cli.common import CLIError, check_can_create, output_folder, shown
from model.cli.overwrite import check_import, refuse_overwrite
from model.importers.kinds import KINDS


def _names(key: str, *roles: str) -> str:
    """The released names of ``key``'s files in ``roles`` (all when none), from the one list
    (``model.importers.kinds``)."""
    sources = KINDS[key].sources
    return ", ".join(s.names[0] for s in sources if not roles or s.role in roles)


def add_import_args(sub) -> None:
    p = sub.add_parser(
        "openai-dvae",
        help="OpenAI's released dVAE (encoder.pkl, decoder.pkl) -> a dVAE file for train --vae",
    )
    p.add_argument("--encoder", required=True, help="encoder.pkl as downloaded")
    p.add_argument("--decoder", required=True, help="decoder.pkl as downloaded")
    p.add_argument("--out", required=True, help="the dVAE file to write (.safetensors)")
    p.add_argument("--image-size", type=int, default=256, help="the released model's is 256")

    for key, title in (("mega", "DALL·E Mega (2.6B)"), ("mini", "DALL·E Mini (0.4B)")):
        files = _names(key, "encoder", "decoder", "vocab", "merges")
        vqgan = KINDS[key].sources[4].repository.name
        p = sub.add_parser(
            key,
            help=f"{title} from min-dalle's files and dalle-mini's VQGAN -> a model bundle",
            description=f"Convert {title} into one .dalle.safetensors bundle for the studio and "
            f"the CLI. --from holds {KINDS[key].sources[0].repository.name}'s {files} (and "
            f"optionally {_names(key, 'detoker')}); --vqgan-dir holds {vqgan}'s "
            f"{_names(key, 'vqgan', 'vqgan_config')} (the VQGAN's encoder turns your picture "
            "into tokens).",
        )
        p.add_argument(
            "--from", dest="source", metavar="DIR", required=True, help="min-dalle's files"
        )
        p.add_argument("--out", required=True, help="the bundle to write (.dalle.safetensors)")
        p.add_argument(
            "--vqgan-dir",
            metavar="DIR",
            default=None,
            help="flax_model.msgpack and config.json of the VQGAN (default: the --from folder)",
        )
        p.add_argument(
            "--dtype",
            choices=["bf16", "fp16", "fp32"],
            default="bf16",
            help="the transformer's stored precision (default bf16: Mega in 5.2 GB, fp32 10.4 "
            "GB); the VQGAN stays fp32",
        )

    p = sub.add_parser(
        "rudalle",
        help="ruDALL-E Malevich (v3) or Surrealist XL with the Sber VQGAN -> a model bundle",
        description="Convert ruDALL-E into one .dalle.safetensors bundle for the studio and the "
        "CLI (Russian captions, 256 px, 32x32 tokens). --from holds the transformer ("
        + " or ".join(
            f"{KINDS[k].sources[0].repository.name}'s {_names(k, 'transformer')}"
            for k in ("malevich", "surrealist")
        )
        + f") and {KINDS['malevich'].sources[1].repository.name}' "
        + _names("malevich", "vqgan", "bpe").replace(", ", " and ")
        + ".",
    )
    p.add_argument("--from", dest="source", metavar="DIR", required=True, help="the files")
    p.add_argument("--out", required=True, help="the bundle to write (.dalle.safetensors)")
    p.add_argument(
        "--dtype",
        choices=["bf16", "fp16", "fp32"],
        default="bf16",
        help="the transformer's stored precision (default bf16: Malevich in 2.6 GB, fp32 5.2 "
        "GB); the VQGAN stays fp32",
    )
    p.add_argument(
        "--version",
        choices=["v3", "v2"],
        default="v3",
        help="the checkpoint's layout (v3: Malevich v3, Surrealist XL; v2 is not supported yet)",
    )

    p = sub.add_parser(
        "realesrgan",
        help="a Real-ESRGAN upscaler (.pth, or ncnn .param + .bin) -> an .upscaler.safetensors",
        description="Convert Real-ESRGAN weights: the official RealESRGAN_x4plus.pth or "
        "realesr-animevideov3.pth, or an ncnn conversion (realesrgan-x4plus.param and .bin).",
    )
    p.add_argument(
        "--from", dest="files", metavar="FILE", nargs="+", required=True,
        help="one .pth, or a .param (its .bin beside it) or both",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="the file to write (.upscaler.safetensors)")


def progress(message: str) -> None:
    print(f"dalle import: {message}", file=sys.stderr, flush=True)


def output_file(text: str) -> Path:
    out = Path(text)
    if not out.name.endswith(".safetensors"):
        raise CLIError(f"--out {shown(out)}: name a .safetensors file")
    if out.is_dir():
        raise CLIError(f"--out {shown(out)} is a folder; name a .safetensors file")
    check_can_create(out.parent if str(out.parent) else Path("."))
    return out


def convert(out: Path, run: Callable[[], object]) -> None:
    """``run`` an importer with ``out``'s folders made for it, and removed again when it refuses
    its input or fails to write (an importer names the file in its one-line ValueError)."""
    try:
        with output_folder(out.parent):
            run()
    except ValueError as error:
        raise CLIError(str(error)) from None


def cmd_import(args) -> int:
    check_import(args, Path(args.out))  # no output over a source file (model/cli/overwrite.py)
    if args.family == "openai-dvae":
        from model.importers.openai_dvae import import_openai_dvae

        out = output_file(args.out)
        if not 8 <= args.image_size <= 4096:
            raise CLIError(f"--image-size must be from 8 to 4096, got {args.image_size}")
        convert(
            out,
            lambda: import_openai_dvae(args.encoder, args.decoder, out, args.image_size, progress),
        )
        print(shown(out))
        return 0
    if args.family in ("mega", "mini"):
        from model.bundle import SUFFIX
        from model.importers.dalle_mega import import_dalle

        out = output_file(args.out)
        if not out.name.endswith(SUFFIX):
            raise CLIError(f"--out {shown(out)}: name a {SUFFIX} file (what the studio opens)")
        convert(
            out,
            lambda: import_dalle(
                args.family, args.source, out, args.vqgan_dir, args.dtype, progress
            ),
        )
        print(shown(out))
        return 0
    if args.family == "rudalle":
        from model.bundle import SUFFIX
        from model.importers.rudalle_import import import_rudalle

        out = output_file(args.out)
        if not out.name.endswith(SUFFIX):
            raise CLIError(f"--out {shown(out)}: name a {SUFFIX} file (what the studio opens)")
        convert(
            out,
            lambda: import_rudalle(args.source, out, args.dtype, args.version, progress=progress),
        )
        print(shown(out))
        return 0
    if args.family == "realesrgan":
        from model.importers.realesrgan import import_realesrgan

        out = output_file(args.out)
        sources = [Path(f) for f in args.files]  # and the .bin a lone .param reads beside it
        sources += [f.with_suffix(".bin") for f in sources if f.suffix.lower() == ".param"]
        refuse_overwrite([out], [("--from", f) for f in sources], args.overwrite)
        convert(out, lambda: import_realesrgan(args.files, out, progress))
        print(shown(out))
        return 0
    raise CLIError(f"unknown model family {args.family}")
