"""Did the ruDALL-E layout (issue 20) slow the studio layout's decode step? Before and after in one
run, alternating.

The transformer module of an earlier commit and of this tree are loaded side by side as two
modules; each builds the default preset's transformer (dim 192, depth 6, heads 6, a 16x16 grid,
32 text positions) with the same weights. Every round times, for each in turn (the order swapped
from round to round), a whole image of one-cell steps through ``forward`` (the sampler's call:
text and the start prefilled untimed, then slots 1 .. 255, each a gathered decode step), and
checks first that both give the same logits bit for bit, decoding and in a full pass.

    git worktree add --detach /tmp/before 4ecdde0       # or: git show 4ecdde0:model/transformer.py
    OMP_NUM_THREADS=1 python benchmarks/layout_decode_speed.py --before /tmp/before \\
        [--rounds 15] [--batch 1 8] [--precision fp32 int8]
    git worktree remove /tmp/before
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import TransformerConfig  # noqa: E402
from model.networks import precision as model_precision  # noqa: E402

HERE = Path(__file__).resolve().parents[1] / "model" / "networks" / "transformer.py"
DEFAULT_PRESET = TransformerConfig(
    text_vocab=512, text_len=32, image_vocab=512, grid=16, dim=192, depth=6, heads=6, conv_kernel=5
)


def load(path: Path, name: str) -> ModuleType:
    """``path`` (a transformer.py, or a tree holding one: under model/networks/, or directly under
    model/ in a commit from before the floors) as module ``name``."""
    if path.is_dir():
        # written so that the floors' move script leaves the earlier layout's path alone
        found = [
            path / "model" / "networks" / "transformer.py",
            Path(path, "model", "transformer.py"),
        ]
        path = next((file for file in found if file.is_file()), found[0])
    if not path.is_file():
        raise SystemExit(f"--before {path}: no such file")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def for_inference(module: ModuleType):
    """A loaded transformer.py's own ``for_inference`` (one from before ``model.networks.precision``
    held it), else this tree's."""
    return getattr(module, "for_inference", model_precision.for_inference)


@torch.inference_mode()
def decode_image(model, stream: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Seconds for slots 1 .. N-1 one at a time (text and slot 0 prefilled first), and the
    logits of the last step."""
    cfg = model.config
    cache = model.new_cache(stream.shape[0])
    model(stream[:, : cfg.text_len + 1], 0, cache)
    started = time.perf_counter()
    for p in range(cfg.text_len + 1, cfg.seq_len):
        logits = model(stream[:, p : p + 1], p, cache).image
    return time.perf_counter() - started, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="tree or transformer.py")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--precision", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    modules = {"before": load(args.before, "transformer_before"), "after": load(HERE, "after")}
    torch.manual_seed(0)
    built = {name: module.Transformer(DEFAULT_PRESET).eval() for name, module in modules.items()}
    built["before"].load_state_dict(built["after"].state_dict())
    cells = DEFAULT_PRESET.image_len - 1
    print(f"{cells} one-cell steps per image, {args.rounds} rounds, {args.threads} thread(s)")
    print("| precision | batch | before ms/step (median, best) | after ms/step (median, best) "
          "| after / before (medians) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for precision in args.precision:
        models = {
            name: for_inference(modules[name])(model, precision) for name, model in built.items()
        }
        for batch in args.batch:
            generator = torch.Generator().manual_seed(batch)
            cfg = DEFAULT_PRESET
            text = torch.randint(
                0, cfg.text_vocab_padded, (batch, cfg.text_len), generator=generator
            )
            image = torch.randint(0, cfg.image_vocab, (batch, cfg.image_len), generator=generator)
            stream = models["after"].stream(text, image)
            # a warm-up image each, which must end in the same logits bit for bit
            last = [decode_image(model, stream)[1] for model in models.values()]
            with torch.inference_mode():
                full = [model(stream).image for model in models.values()]
            if not (torch.equal(*last) and torch.equal(*full)):
                raise SystemExit(f"{precision} batch {batch}: before and after logits differ")
            seconds: dict[str, list[float]] = {name: [] for name in models}
            for round_ in range(args.rounds):
                order = list(models) if round_ % 2 == 0 else list(reversed(models))
                for name in order:
                    seconds[name].append(decode_image(models[name], stream)[0] / cells * 1000)
            before, after = (statistics.median(seconds[n]) for n in ("before", "after"))
            print(
                f"| {precision} | {batch} | {before:.3f}, {min(seconds['before']):.3f} "
                f"| {after:.3f}, {min(seconds['after']):.3f} | {after / before:.3f} |"
            )


if __name__ == "__main__":
    main()
