"""``dalle eval``: how good a bundle is, measured on scenes it never saw.

Four sections, each on freshly drawn "scenes" (model/data/scenes/), so no data files are needed:

- reconstruction: tokenizer PSNR of argmax tokens decoded back, and how many codes the encoder uses;
- likelihood: transformer bits per image token, given the caption;
- caption fidelity: ``samples`` candidates per caption, checked by the scenes scorer. Three
  readings: the first sample as drawn, the reranker's pick (the "best of N reranked" the app
  shows first) and whether any candidate is right (the ceiling a perfect reranker would reach);
- completion fidelity: the bottom-right place of a scene regenerated under another scene's
  caption (``scenes.completion_case``), pasted back as the app and CLI do; the scorer checks the
  result and every pixel outside the rectangle must equal the source's.

Two splits: "seen" (colour–shape pairs the training split contains, new images and captions) and
"heldout" (each caption names at least one pair never rendered in training).

``evaluate_folder`` (``dalle eval --data``) measures a user's own caption folder instead: the
reconstruction and likelihood sections, and the reranker's retrieval accuracy.

Both return JSON-ready dicts; ``model/evaluation/eval_report.py`` prints them, summarises them for a
bundle's card and writes them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from model.config import SamplingOptions
from model.data import scenes
from model.evaluation.eval_report import SPLITS, headline
from model.inference.completion import Completion, complete_all
from model.inference.sampling import complete, run

# Training scenes use seed 0 (and small seeds in tests); evaluation draws from its own seed.
DEFAULT_SEED = 20_261_124
_SCENE_SPLIT = {"seen": "train", "heldout": "heldout"}


@dataclass
class EvalConfig:
    count: int = 100  # captions per split for caption fidelity (and completion cases)
    recon_count: int = 500  # images per split for reconstruction and bits per token
    seed: int = DEFAULT_SEED  # which scenes are drawn; each run's sampling seed follows from it
    precision: str = "auto"
    compile: bool = False
    # how candidates are sampled: sampling.n per caption (--samples); its seed is set per run
    sampling: SamplingOptions = field(default_factory=lambda: SamplingOptions(n=8))

    @property
    def samples(self) -> int:
        return self.sampling.n

    def validate(self) -> None:
        for name in ("count", "samples", "recon_count"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        self.sampling.validate()

    def options(self, seed: int) -> SamplingOptions:
        return dataclasses.replace(self.sampling, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """The report's ``config``: one flat object, as every eval.json has stored it."""
        sampling = self.sampling.to_dict()
        return {
            "count": self.count,
            "samples": self.samples,
            "recon_count": self.recon_count,
            "seed": self.seed,
            "precision": self.precision,
            "compile": self.compile,
            **{name: sampling[name] for name in ("temperature", "top_k", "top_p", "guidance")},
        }


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, S, S) float in [0, 1] -> (S, S, 3) uint8, rounded as images are saved."""
    return image.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def scene_batch(split: str, count: int, size: int, seed: int):
    """``count`` scenes of ``split``: (images (count, 3, S, S) in [0, 1], specs)."""
    images, specs = [], []
    for index in range(count):
        image, spec = scenes.render_scene(seed, index, size, _SCENE_SPLIT[split])
        images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
        specs.append(spec)
    return torch.stack(images).float() / 255, specs


# -----------------------------------------------------------------------------------------------
# contact sheets: what the figures were measured on, to look at

SHEET_ROWS = 16  # captions (and completions) per sheet
SHEET_SCALE = 2  # tiles are drawn at twice the model's size, nearest-neighbour
_VERDICT_COLOURS = {None: (150, 150, 150), True: (30, 170, 70), False: (220, 40, 40)}
_FRAME, _GAP, _LINE = 2, 6, 14  # frame width, gap between tiles, height of a text line (px)


@dataclass
class SheetRow:
    caption: str
    references: list[tuple[np.ndarray, bool | None]]  # (S, S, 3) uint8 tiles shown first
    candidates: list[np.ndarray]  # (S, S, 3) uint8, in the order the app shows them
    results: list[scenes.ScoreResult]  # the scorer's reading of each candidate


@torch.inference_mode()
def reconstruct(vae, image: torch.Tensor) -> np.ndarray:
    """The dVAE's argmax reconstruction of one image (3, S, S) in [0, 1], as (S, S, 3) uint8."""
    device = next(vae.parameters()).device
    return to_uint8(vae.decode(vae.encode(image[None].to(device)))[0].float())


def _missed(result: scenes.ScoreResult) -> str:
    facts = [check.fact for check in result.checks if check.ok is False]
    return "right" if not facts else "misses " + "; ".join(facts)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own font at 11 px, or its bitmap font without FreeType. Neither has "×"."""
    try:
        return ImageFont.load_default(size=11)
    except ImportError:
        return ImageFont.load_default()


def contact_sheet(rows: list[SheetRow], title: str, first: str = "pick") -> Image.Image:
    """One row per caption: its text and what the first candidate (the reranker's pick) misses,
    then the reference tiles and the candidates, each framed by the scorer's verdict (green
    right, red wrong, grey not scored). ``first`` names the first candidate in the text."""
    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    side = rows[0].candidates[0].shape[0] * SHEET_SCALE + 2 * _FRAME
    tiles = max(len(r.references) + len(r.candidates) for r in rows)
    font = _font()
    lines = [(row.caption, f"{first}: {_missed(row.results[0])}".replace("×", "x")) for row in rows]
    text_width = max(font.getlength(text) for pair in lines for text in pair)
    width = max(tiles * (side + _GAP) + _GAP * 3, math.ceil(text_width) + 2 * _GAP)
    row_height = 2 * _LINE + side + _GAP
    sheet = Image.new("RGB", (width, _LINE + _GAP + len(rows) * row_height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.font = font
    draw.text((_GAP, 2), title, fill=(0, 0, 0))
    for r, (row, (caption, missed)) in enumerate(zip(rows, lines, strict=True)):
        top = _LINE + _GAP + r * row_height
        draw.text((_GAP, top), caption, fill=(0, 0, 0))
        draw.text((_GAP, top + _LINE), missed, fill=(90, 90, 90))
        framed = row.references + [
            (image, result.correct)
            for image, result in zip(row.candidates, row.results, strict=True)
        ]
        x = _GAP
        for k, (image, verdict) in enumerate(framed):
            if k == len(row.references):
                x += 2 * _GAP  # candidates start after a wider gap
            y = top + 2 * _LINE
            draw.rectangle((x, y, x + side - 1, y + side - 1), fill=_VERDICT_COLOURS[verdict])
            tile = Image.fromarray(image).resize(
                (side - 2 * _FRAME, side - 2 * _FRAME), Image.Resampling.NEAREST
            )
            sheet.paste(tile, (x + _FRAME, y + _FRAME))
            x += side + _GAP
    return sheet


# -----------------------------------------------------------------------------------------------
# sections


@torch.inference_mode()
def reconstruction(bundle, images: torch.Tensor, specs=None, batch: int = 64) -> dict[str, Any]:
    """Tokenizer PSNR (per image, then averaged) and codebook usage of argmax tokens.

    With ``specs`` (the images' scenes), also ``caption_right``: how often the scorer finds each
    image's own caption fully right in its reconstruction. No sample of the transformer can be
    read better than the dVAE can draw it, so this is the ceiling of the caption figures.
    """
    vae, device = bundle.vae, bundle.device
    psnr, counts = [], torch.zeros(vae.config.vocab_size, dtype=torch.long)
    scored = []
    for start in range(0, len(images), batch):
        x = images[start : start + batch].to(device)
        tokens = vae.encode(x)
        decoded = vae.decode(tokens).float()
        mse = (decoded - x).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
        psnr.append(-10 * torch.log10(mse).cpu())
        if specs is not None:
            for image, spec in zip(decoded, specs[start : start + batch], strict=True):
                scored.append(scenes.score(to_uint8(image), spec.stated))
        counts += torch.bincount(tokens.flatten().cpu(), minlength=vae.config.vocab_size)
    p = counts.float() / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    used = int((counts > 0).sum())
    ceiling = {}
    if scored:
        table = scenes.fidelity_table(scored)
        ceiling = {
            "caption_right": table["accuracy"],
            "caption_right_by_objects": {n: v["accuracy"] for n, v in table["by_objects"].items()},
            "caption_right_by_fact": {k: v["accuracy"] for k, v in table["by_fact"].items()},
        }
    return {
        **ceiling,
        "images": len(images),
        "psnr_db": float(torch.cat(psnr).mean()),
        "codes_used": used,
        "codebook_usage": used / vae.config.vocab_size,
        "code_perplexity": math.exp(entropy),
    }


@torch.inference_mode()
def likelihood(bundle, images: torch.Tensor, captions: list[str], batch: int = 32) -> float:
    """Mean bits per image token of the tokens' own caption-conditioned likelihood."""
    device, total, n = bundle.device, 0.0, 0
    transformer = bundle.transformer.eval()
    for start in range(0, len(images), batch):
        x = images[start : start + batch].to(device)
        tokens = bundle.vae.encode(x).flatten(1)
        text = bundle.tokenizer.encode(captions[start : start + batch]).to(device)
        nats = transformer.loss(text, tokens)["image_loss"].item()
        total += nats * len(x)
        n += len(x)
    return total / n / math.log(2)


def _readings(done, results: list[scenes.ScoreResult]) -> dict[str, scenes.ScoreResult]:
    """The scored candidates of one Done read three ways: first as drawn, the reranker's pick,
    the best of all."""
    order = getattr(done, "order", None) or list(range(len(results)))
    first = results[order.index(0)]  # the candidate sampled first, wherever reranking put it
    best = next((r for r in results if r.correct), results[0])
    return {"first": first, "reranked": results[0], "any": best}


def _summary(results: list[scenes.ScoreResult]) -> dict[str, Any]:
    table = scenes.fidelity_table(results)
    relation = [r for r in results if r.n_objects == 2 and r.category("relation") is not None]
    table["two_objects_relation"] = {
        "n": len(relation),
        "accuracy": sum(r.correct for r in relation) / len(relation) if relation else None,
    }
    return table


def caption_fidelity(
    bundle, specs, config: EvalConfig, progress=None, sheet: list | None = None
) -> dict[str, Any]:
    """Generate ``config.samples`` candidates per caption and score them three ways.

    With ``sheet`` (a list), the first ``SHEET_ROWS`` captions are added to it as contact-sheet
    rows: the scene as rendered, its dVAE reconstruction, then the candidates best first.
    """
    readings: dict[str, list] = {"first": [], "reranked": [], "any": []}
    size = bundle.config.vae.image_size
    for i, spec in enumerate(specs):
        done = run(
            complete(
                bundle,
                None,
                (0, 0),
                spec.caption,
                config.options(config.seed + i),
                precision=config.precision,
                compile=config.compile,
            )
        )
        results = [scenes.score(to_uint8(image), spec.stated) for image in done.images]
        for name, result in _readings(done, results).items():
            readings[name].append(result)
        if sheet is not None and i < SHEET_ROWS:
            rendered = np.asarray(scenes.render(spec, size))
            pixels = torch.from_numpy(rendered.copy()).permute(2, 0, 1).float() / 255
            reconstructed = reconstruct(bundle.vae, pixels)
            references = [
                (rendered, None),
                (reconstructed, scenes.score(reconstructed, spec.stated).correct),
            ]
            candidates = [to_uint8(image) for image in done.images]
            sheet.append(SheetRow(spec.caption, references, candidates, results))
        if progress:
            progress()
    out = {name: _summary(results) for name, results in readings.items()}
    # captions the model gets right: what the model card and the studio's Examples offer
    out["right_captions"] = [
        spec.caption for spec, r in zip(specs, readings["reranked"], strict=True) if r.correct
    ]
    return out


def completion_fidelity(
    bundle,
    split: str,
    config: EvalConfig,
    progress=None,
    sheet: list | None = None,
    scale: int = 1,
    area: str | int = "whole",
    upscaler=None,
) -> dict[str, Any]:
    """Regenerate the bottom-right place of ``config.count`` scenes under a new caption, as a
    user would: ``model.inference.completion`` from the rectangle's corner pixel.

    ``scale``: the scenes are drawn at ``scale`` times the model's size (a picture larger than
    the model) and completed in the working ``area`` (whole, auto or a side), the upscaler
    drawing the result when one is given; each result is scored at the model's size. With
    ``sheet``, the first ``SHEET_ROWS`` cases become contact-sheet rows: the source, the target
    scene the caption describes, then the pasted candidates best first.
    """
    size = bundle.config.vae.image_size
    factor = bundle.config.vae.factor
    grid = bundle.config.transformer.grid
    corner = math.ceil(grid * 2 / 3)  # first cell wholly inside the bottom-right place
    start = corner * factor * scale
    readings: dict[str, list] = {"first": [], "reranked": [], "any": []}
    kept_identical, seen_pixels = 0, []
    for i in range(config.count):
        source, target = scenes.completion_case(
            config.seed + 1, i, size * scale, start, _SCENE_SPLIT[split]
        )
        completion = Completion.at_pixel(
            bundle,
            source,
            (start, start),
            target.caption,
            config.options(config.seed + 10_000 + i),
            area=area,
            upscaler=upscaler,
            precision=config.precision,
            compile=config.compile,
        )
        pasted, done = complete_all(completion)
        seen_pixels.append(completion.area.pixels_per_model_pixel(size))
        x0, y0 = completion.corner
        original = np.asarray(source)
        mask = np.ones(original.shape[:2], dtype=bool)
        mask[y0:, x0:] = False
        kept_identical += all(
            np.array_equal(np.asarray(image)[mask], original[mask]) for image in pasted
        )
        if scale != 1:  # the scorer reads scenes at the model's size
            pasted = [image.resize((size, size), Image.Resampling.LANCZOS) for image in pasted]
        results = [scenes.score(image, target.stated) for image in pasted]
        for name, result in _readings(done, results).items():
            readings[name].append(result)
        if sheet is not None and i < SHEET_ROWS:
            shown = np.asarray(source.resize((size, size), Image.Resampling.LANCZOS))
            references = [(shown, None), (np.asarray(scenes.render(target, size)), None)]
            candidates = [np.asarray(image) for image in pasted]
            sheet.append(SheetRow(target.caption, references, candidates, results))
        if progress:
            progress()
    out = {name: _summary(results) for name, results in readings.items()}
    out["from_cell"] = [corner, corner]
    out["kept_region_identical"] = kept_identical / config.count
    if scale != 1 or area != "whole":
        out["scale"], out["area"] = scale, area
        out["picture_pixels_per_model_pixel"] = sum(seen_pixels) / len(seen_pixels)
    return out


# -----------------------------------------------------------------------------------------------
# the whole evaluation


def evaluate(
    bundle,
    config: EvalConfig,
    progress: Callable[[str, int], Any] | None = None,
    sheets: dict[str, Image.Image] | None = None,
):
    """Every section on both splits; returns a JSON-ready dict.

    With ``sheets`` (a dict), also draws a contact sheet per section and split into it, named
    ``caption_seen``, ``completion_heldout`` and so on (``contact_sheet``).
    """
    config.validate()
    size = bundle.config.vae.image_size
    report: dict[str, Any] = {
        "bundle": bundle.card.get("name", ""),
        "config": config.to_dict(),
        "reranker": bundle.reranker is not None,
    }
    started = time.perf_counter()
    for split in SPLITS:
        tick = progress(split, 2 * config.count) if progress else None
        # the same scenes serve every section: the first recon_count of them the dVAE and the
        # likelihood, the first count of them caption fidelity
        images, specs = scene_batch(split, max(config.recon_count, config.count), size, config.seed)
        images, recon_specs = images[: config.recon_count], specs[: config.recon_count]
        caption_rows = [] if sheets is not None else None
        completion_rows = [] if sheets is not None else None
        section = {
            "reconstruction": reconstruction(bundle, images, recon_specs),
            "bits_per_image_token": likelihood(bundle, images, [s.caption for s in recon_specs]),
            "caption": caption_fidelity(bundle, specs[: config.count], config, tick, caption_rows),
            "completion": completion_fidelity(bundle, split, config, tick, completion_rows),
        }
        report[split] = section
        if sheets is not None:
            sheets[f"caption_{split}"] = contact_sheet(
                caption_rows,
                f"{split} captions: scene, its tokenizer reconstruction | "
                f"{config.samples} samples, the reranker's order",
            )
            sheets[f"completion_{split}"] = contact_sheet(
                completion_rows,
                f"{split} completions: source, target scene | {config.samples} completions, "
                "the reranker's order",
            )
    report["seconds"] = time.perf_counter() - started
    report["headline"] = headline(report)
    return report


# -----------------------------------------------------------------------------------------------
# a user's own caption folder: the figures that need no scenes scorer


@torch.inference_mode()
def retrieval(bundle, images: torch.Tensor, captions: list[str], group: int = 32) -> dict:
    """How often the reranker finds each image's own caption among its group's captions, and
    each caption's image among the group's images (top-1; chance is 1 / group)."""
    reranker, device = bundle.reranker.eval(), bundle.device
    image_hits = caption_hits = n = 0
    for start in range(0, len(images), group):
        x = images[start : start + group].to(device)
        if len(x) < 2:  # a lone last image has nothing to be told apart from
            break
        text = bundle.tokenizer.encode(captions[start : start + group]).to(device)
        image_emb, text_emb = reranker.embed(x, text)
        similarity = image_emb @ text_emb.t()
        labels = torch.arange(len(x), device=similarity.device)
        image_hits += int((similarity.argmax(dim=1) == labels).sum())
        caption_hits += int((similarity.argmax(dim=0) == labels).sum())
        n += len(x)
    return {
        "group": group,
        "pairs": n,
        "image_to_caption": image_hits / n if n else None,
        "caption_to_image": caption_hits / n if n else None,
    }


def evaluate_folder(bundle, folder, count: int = 500) -> dict[str, Any]:
    """dVAE reconstruction, bits per image token and reranker retrieval on a caption folder
    (``dalle eval --data``). Caption fidelity needs the scenes scorer, so it is not measured.

    Takes the folder's first ``count`` pairs in path order, each as its largest centred square
    with its first caption line: keep that folder out of training."""
    from model.data.folder import CaptionFolder

    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    started = time.perf_counter()
    dataset = CaptionFolder(folder, bundle.config.vae.image_size, augment=False)
    pairs = [dataset[index] for index in range(min(count, len(dataset)))]
    images = torch.stack([image for image, _ in pairs])
    captions = [caption for _, caption in pairs]
    report: dict[str, Any] = {
        "bundle": bundle.card.get("name", ""),
        "folder": str(folder),
        "pairs": len(pairs),
        "pairs_in_folder": len(dataset),
        "skipped": {
            "no_caption": dataset.skipped_no_caption,
            "unreadable": dataset.skipped_unreadable,
        },
        "reconstruction": reconstruction(bundle, images),
        "bits_per_image_token": likelihood(bundle, images, captions),
    }
    if bundle.reranker is not None:
        report["retrieval"] = retrieval(bundle, images, captions)
    report["seconds"] = time.perf_counter() - started
    return report
