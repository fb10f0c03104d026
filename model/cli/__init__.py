"""The ``dalle`` command line: generation, completion, data, training, bundles and bench.

Every command checks its input before doing any work (images from their headers, bundles from
theirs, every option's range, the memory a run will need), exits 2 with a one-line reason on bad
input, and creates its output folder only once everything has been checked. Every file goes
through ``model.files``' atomic writer, so nothing is left half-written, even on SIGTERM. Anything
unexpected is one line on stderr and a traceback in a log file, not a traceback on the terminal.

``--out``: a path with an image suffix (``.png``) is a file, numbered ``-0``, ``-1``, ... when
``--n`` asks for several (and said so on stderr); anything else is a folder.

This package holds the parser and ``main``; the commands live by family: ``sample`` (generate,
complete), ``training`` (data, train, bundle), ``measure`` (eval, bench), and ``common`` what
they share.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from model.cli.common import CLIError, shown
from model.cli.importing import add_import_args, cmd_import
from model.cli.krita import add_krita_args
from model.cli.measure import cmd_bench, cmd_eval
from model.cli.overwrite import OVERWRITE_HELP
from model.cli.sample import cmd_complete, cmd_generate
from model.cli.serve import add_serve_args, cmd_serve
from model.cli.training import cmd_bundle, cmd_data, cmd_train
from model.cli.upscaling import add_upscale_args
from model.config import SamplingOptions
from model.files import write_text

log = logging.getLogger("dalle")

# options whose values may start with '-' (argparse takes "-1,3" for an option, not a value)
NEGATIVE_VALUE_OPTIONS = ("--from", "--from-px", "--to", "--to-px")


# -- parser ------------------------------------------------------------------------------------


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    SamplingOptions.add_arguments(p)
    add_precision_arg(p)


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "int8"],
        default="auto",
        help="auto: bf16 on CUDA, int8 weights on x86 CPUs, else fp32",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the one-cell step: faster after ~15 s of compiling per batch size "
        "(needs a C++ compiler on CPU; falls back to eager with a warning)",
    )


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default=None, help="model bundle (default: the embedded model)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block): ``dalle generate: error: ...``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dalle", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate images from a caption")
    p.add_argument("--caption", required=True)
    p.add_argument(
        "--out",
        default="out.png",
        help="a .png file (numbered -0, -1, ... when --n > 1) or a folder (named from the caption)",
    )
    add_sampling_args(p)
    add_common_args(p)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "complete",
        help="regenerate a rectangle of an image (by default to its bottom-right corner)",
    )
    p.add_argument("--image")
    p.add_argument(
        "--from",
        dest="from_cell",
        metavar="ROW,COL",
        help="top-left cell of the rectangle: ROW,COL (cells)",
    )
    p.add_argument(
        "--from-px",
        metavar="X,Y",
        help="top-left pixel of the rectangle: X,Y (pixels; snapped to its cell)",
    )
    p.add_argument(
        "--to",
        metavar="ROW,COL",
        help="bottom-right cell of the region, itself regenerated: ROW,COL (cells; with --from; "
        "default: the bottom-right corner, DALL·E's own rectangle)",
    )
    p.add_argument(
        "--to-px",
        metavar="X,Y",
        help="bottom-right pixel of the region, itself regenerated, as selection tools show it: "
        "X,Y (pixels; with --from-px; snapped outwards to its cell)",
    )
    p.add_argument(
        "--lookahead",
        type=int,
        default=1,
        metavar="K",
        help="sample K times --n candidates and keep the --n whose pixels after the region "
        "(right of and below it) the model finds likeliest (default 1: no lookahead)",
    )
    p.add_argument("--caption")
    p.add_argument("--batch", help="CSV with image,caption,row,col per line")
    p.add_argument(
        "--out",
        default="completions",
        help="a folder, or for one image a .png file (numbered -0, -1, ... when --n > 1)",
    )
    p.add_argument("--feather", type=int, default=0, help="blend pixels at the seam")
    p.add_argument(
        "--area",
        metavar="whole|auto|PIXELS",
        help="what the model sees: the whole picture, auto (a square twice the rectangle's "
        "longer side, at least the model's size) or a square side in pixels, reaching the "
        "bottom-right corner, or a margin past a --to region (default: the model's own: "
        "whole for a scenes model trained here, auto for an imported one)",
    )
    p.add_argument(
        "--upscaler",
        default="auto",
        metavar="auto|off|FILE",
        help="what draws a result the model made smaller than the picture: auto (the shipped "
        "Real-ESRGAN, when the picture has over 1.25 pixels per model pixel), off (Lanczos) or "
        "an imported *.upscaler.safetensors",
    )
    add_sampling_args(p)
    add_common_args(p)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_complete)

    p = sub.add_parser("data", help="make datasets")
    data = p.add_subparsers(dest="dataset", required=True)
    s = data.add_parser("scenes", help="procedural caption-image scenes")
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--split", choices=["train", "heldout"], default="train")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_data)

    p = sub.add_parser(
        "train", help="train the dVAE or the VQ tokenizer, the transformer or the reranker"
    )
    p.add_argument("stage", choices=["vae", "vq", "transformer", "reranker"])
    p.add_argument("--data", required=True, help="folder of images with same-name .txt captions")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics, result)")
    p.add_argument(
        "--vae", help="transformer: the trained image tokenizer (vae.safetensors or vq.safetensors)"
    )
    p.add_argument("--bundle", help="reranker: the bundle it will join")
    p.add_argument(
        "--tokenizer",
        help="transformer: reuse this tokenizer.json instead of training one on the captions",
    )
    p.add_argument(
        "--init",
        help="vae: start from this trained vae.safetensors; vq: this vq.safetensors' codes "
        "(with --decoder-only); transformer: start from this bundle's transformer and tokenizer "
        "(fine-tuning); reranker: from this bundle's reranker",
    )
    p.add_argument(
        "--reconstructed",
        action="store_true",
        help="reranker: train on --bundle's dVAE reconstructions of the images (how samples look)",
    )
    p.add_argument(
        "--decoder-only",
        action="store_true",
        help="vae, vq: freeze --init's encoder (tokens unchanged), train its decoder on hard "
        "codes; vq: --set pool=2 --set image_size=128 draws 64 px codes at 128 px",
    )
    p.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--preset", default="default", help="model size preset: tiny, small, default")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field: --set dim=384, --set text.text_len=48, "
        "--set code_usage=1 (train vae), --set train.lr=1e-3",
    )
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bundle", help="assemble a single-file model bundle")
    p.add_argument("--transformer", required=True, help="a transformer run's bundle")
    p.add_argument("--reranker", help="a bundle carrying a trained reranker, to take it from")
    p.add_argument("--eval", help="a `dalle eval --json` report to summarise into the card")
    p.add_argument("--name", help="the name the studio shows for this model")
    p.add_argument(
        "--vae",
        help="a `train vae|vq --decoder-only` tokenizer to replace the bundle's (same encoder "
        "and codes; a VQ one may draw at another size, e.g. 128 px)",
    )
    p.add_argument("--out", required=True, help="X.dalle.safetensors")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser(
        "eval", help="measure a bundle on held-out scenes or your own folder (table + JSON)"
    )
    p.add_argument("--count", type=int, default=100, help="captions (and completions) per split")
    p.add_argument("--samples", type=int, default=8, help="candidates per caption")
    p.add_argument("--recon-count", type=int, default=500, help="images per split for the dVAE")
    p.add_argument("--seed", type=int, default=20_261_124, help="which scenes are drawn")
    SamplingOptions.add_arguments(p, skip=("n", "seed"))  # --samples and --seed are eval's own
    p.add_argument("--json", help="also write the full report here")
    p.add_argument(
        "--sheets",
        help="also draw contact sheets into this folder: the first 16 captions and completions "
        "per split, every candidate framed by the scorer's verdict",
    )
    p.add_argument(
        "--data",
        help="your own caption folder, held out from training: tokenizer PSNR, codes, bits per "
        "image token and reranker retrieval on its first --recon-count pairs (no scenes)",
    )
    add_precision_arg(p)
    add_common_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="time sampling (tokens/s, latency, peak memory)")
    add_common_args(p)
    p.add_argument("--random", action="store_true", help="a random-weight model of the given size")
    p.add_argument("--dim", type=int, default=320)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--vocab", type=int, default=1024, help="image and text vocabulary")
    p.add_argument("--batch", type=int, nargs="*", default=None, help="batch sizes (default 1 8)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_precision_arg(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "import",
        help="convert downloaded weights (OpenAI's dVAE, ...) into files the product reads",
    )
    families = p.add_subparsers(dest="family", required=True, parser_class=Parser)
    add_import_args(families)
    for family in families.choices.values():
        family.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_import)

    add_upscale_args(sub)
    add_krita_args(sub)

    p = sub.add_parser(
        "serve",
        help='serve OpenAI\'s images API on localhost (pip install -e ".[serve]")',
        description="OpenAI's images API (generations, edits with a mask, models) for one model, "
        "one job at a time from a bounded queue. Binds to loopback unless --api-key is given.",
    )
    add_serve_args(p)
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "int8"],
        default="auto",
        help="auto: bf16 on CUDA, int8 weights on x86 CPUs, else fp32",
    )
    p.add_argument("--bundle", default=None, help="model bundle (default: the embedded model)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=cmd_serve)
    return parser


def attach_negative_values(argv: list[str]) -> list[str]:
    """``--from -1,3`` as ``--from=-1,3``: argparse takes a value starting with '-' for an
    option and says "expected one argument"; this way the command says what is wrong with it."""
    joined: list[str] = []
    values = iter(argv)
    for arg in values:
        if arg in NEGATIVE_VALUE_OPTIONS:
            value = next(values, None)
            if value is not None and value.startswith("-") and value[1:2].isdigit():
                joined.append(f"{arg}={value}")
                continue
            joined.append(arg)
            if value is not None:
                joined.append(value)
            continue
        joined.append(arg)
    return joined


def log_folder() -> Path:
    """The per-user folder for the command line's crash logs."""
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Logs"
    else:
        base = Path(os.environ.get("XDG_STATE_HOME") or home / ".local" / "state")
    return base / "dalle-studio" / "logs"


def write_crash_log(command: str, argv: list[str], details: str) -> Path | None:
    """The traceback of an unexpected error, in the log folder (or the temp folder)."""
    name = f"dalle-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = f"dalle {command}\nargs: {[shown(a) for a in argv]}\n\n{details}"
    for folder in (log_folder(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return write_text(folder / name, text, private=True)
        except OSError:
            continue
    return None


def _terminated(signum, frame):
    # an exception, so that every atomic writer removes its temporary file on the way out
    raise SystemExit(128 + signum)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(attach_negative_values(argv))
    except SystemExit as stop:  # --help, or a usage error already printed on one line
        return stop.code if isinstance(stop.code, int) else 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    command = args.command
    try:
        with sigterm_raises():
            return args.func(args)
    except CLIError as error:
        print(f"dalle {command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dalle {command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as stop:
        if stop.code == 128 + signal.SIGTERM:
            print(f"dalle {command}: terminated", file=sys.stderr)
        raise
    except Exception as error:  # noqa: BLE001 - the last resort: one line and a log file
        lines = str(error).strip().splitlines()
        what = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
        if isinstance(error, MemoryError):
            what = "out of memory"
        log_path = write_crash_log(command, argv, traceback.format_exc())
        where = f"; details in {log_path}" if log_path else ""
        print(f"dalle {command}: unexpected error: {shown(what)}{where}", file=sys.stderr)
        return 1
