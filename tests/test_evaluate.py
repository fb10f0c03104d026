"""`dalle eval`: the completion protocol, the report's figures and the command's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model import cli
from model.config import SamplingOptions
from model.data import scenes
from model.evaluation import eval_report, evaluate
from tests.helpers import tiny_bundle, tiny_bundle_file


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_completion_case_differs_only_inside_the_rectangle(split):
    for index in range(40):
        source, target = scenes.completion_case(3, index, 64, 44, split)
        drawn = np.asarray(scenes.render(target, 64))
        changed = np.any(np.asarray(source) != drawn, axis=-1)
        assert changed[44:, 44:].any(), "the source must differ from the target in the rectangle"
        changed[44:, 44:] = False
        assert not changed.any(), f"case {index}: pixels outside the rectangle differ"


def test_completion_case_can_pass_and_fail_the_scorer():
    """The target's own render is right for its caption and the source is not, so the completion
    figure measures the regenerated region and nothing else."""
    for index in range(40):
        source, target = scenes.completion_case(7, index, 64, 44)
        assert scenes.score(scenes.render(target, 64), target.stated).correct
        assert not scenes.score(source, target.stated).correct


def test_completion_case_is_deterministic_and_checks_its_rectangle():
    a_image, a_spec = scenes.completion_case(1, 5, 64, 44)
    b_image, b_spec = scenes.completion_case(1, 5, 64, 44)
    assert a_spec == b_spec and np.array_equal(np.asarray(a_image), np.asarray(b_image))
    with pytest.raises(ValueError, match="inside the image"):
        scenes.completion_case(1, 5, 64, 64)


@pytest.mark.parametrize(("place", "start", "end"), [((1, 1), 48, 80), ((0, 0), 0, 40)])
def test_completion_case_in_another_place_changes_only_its_region(place, start, end):
    """The middle and the top-left places (issue 31): the changed object lies wholly inside the
    region, every other object wholly outside it, and the source differs only there."""
    for index in range(20):
        source, target = scenes.completion_case(3, index, 128, start, "heldout", place, end)
        chosen = [obj for obj in target.objects if obj.cell == place]
        assert len(chosen) == 1
        for obj in target.objects:
            x0, y0, x1, y1 = scenes.rendering._box(obj, 128)
            if obj.cell == place:
                assert start <= min(x0, y0) and max(x1, y1) <= end
            else:
                assert min(x1, y1) <= start or max(x0, y0) >= end
        changed = np.any(np.asarray(source) != np.asarray(scenes.render(target, 128)), axis=-1)
        assert changed[start:end, start:end].any()
        changed[start:end, start:end] = False
        assert not changed.any(), f"case {index}: pixels outside the region differ"
        assert not scenes.score(source, target.stated).correct
    with pytest.raises(ValueError, match="inside the image"):
        scenes.completion_case(1, 5, 128, 0, place=(0, 0), end=129)


@pytest.fixture(scope="module")
def report():
    bundle = tiny_bundle()
    config = evaluate.EvalConfig(
        count=2, recon_count=6, precision="fp32", sampling=SamplingOptions(n=2)
    )
    return evaluate.evaluate(bundle, config)


def test_report_has_every_section_and_sane_figures(report):
    for split in evaluate.SPLITS:
        section = report[split]
        recon = section["reconstruction"]
        assert recon["images"] == 6
        assert 1 <= recon["codes_used"] <= 32
        assert recon["codebook_usage"] == pytest.approx(recon["codes_used"] / 32)
        assert 1.0 <= recon["code_perplexity"] <= recon["codes_used"] + 1e-6
        assert np.isfinite(recon["psnr_db"])
        assert 0.0 <= recon["caption_right"] <= 1.0
        # a random model spreads its guesses: about log2(32) = 5 bits per token, never 0
        assert 1.0 < section["bits_per_image_token"] < 10.0
        for part in ("caption", "completion"):
            for reading in ("first", "reranked", "any"):
                table = section[part][reading]
                assert table["n"] == 2
                assert 0.0 <= table["accuracy"] <= 1.0
            # the best of the candidates is never worse than either single reading
            assert section[part]["any"]["accuracy"] >= section[part]["first"]["accuracy"]
            assert section[part]["any"]["accuracy"] >= section[part]["reranked"]["accuracy"]
        assert section["completion"]["kept_region_identical"] == 1.0
    assert set(report["headline"]) == set(eval_report.TARGETS)
    recon = report["seen"]["reconstruction"]  # the ceiling: the scorer on reconstructions
    assert report["headline"]["ceiling_all"] == recon["caption_right"]
    one = recon["caption_right_by_objects"]
    assert report["headline"]["ceiling_one_object"] == one.get(1, one.get("1"))
    assert report["heldout"]["caption"]["first"]["by_heldout"]["heldout"]["n"] == 2


def test_more_captions_than_reconstruction_images_are_all_measured():
    config = evaluate.EvalConfig(
        count=3, recon_count=2, precision="fp32", sampling=SamplingOptions(n=1)
    )
    report = evaluate.evaluate(tiny_bundle(), config)
    for split in evaluate.SPLITS:
        assert report[split]["reconstruction"]["images"] == 2
        assert report[split]["caption"]["first"]["n"] == 3
        assert report[split]["completion"]["first"]["n"] == 3


def test_report_formats_a_table_and_writes_json(report, tmp_path):
    text = eval_report.format_report(report)
    assert "tokenizer PSNR" in text and "targets (issue 17):" in text
    # sub-groups are small: each shows how many it was measured on, "12.5% (1/8)"
    groups = report["seen"]["caption"]["reranked"]["by_objects"]
    n, summary = next(iter(groups.items()))
    right = round(summary["accuracy"] * summary["n"])
    assert f"{n} object(s)" in text and f"({right}/{summary['n']})" in text
    assert text.count("missed") + text.count("met") + text.count("not measured") >= len(
        eval_report.TARGETS
    )
    path = eval_report.write_json(report, tmp_path / "eval.json")
    assert json.loads(path.read_text())["seen"]["reconstruction"]["images"] == 6
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_eval_command_writes_json(tmp_path, capsys):
    bundle = tiny_bundle_file(tmp_path)
    out = tmp_path / "reports" / "eval.json"
    argv = ["eval", "--bundle", str(bundle), "--count", "1", "--samples", "2"]
    argv += ["--recon-count", "2", "--json", str(out), "--quiet", "--precision", "fp32"]
    assert cli.main(argv) == 0
    assert "bits per image token" in capsys.readouterr().out
    assert json.loads(out.read_text())["config"]["samples"] == 2


@pytest.mark.parametrize("flag", ["--count", "--samples", "--recon-count"])
def test_eval_command_refuses_non_positive_counts(tmp_path, capsys, flag):
    bundle = tiny_bundle_file(tmp_path)
    assert cli.main(["eval", "--bundle", str(bundle), flag, "0", "--quiet"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err


def test_eval_config_holds_sampling_options_and_stores_them_flat():
    """EvalConfig keeps a SamplingOptions (its n is --samples, its seed set per run) and writes
    the flat config every eval.json has: the shipped report's, key for key, from the defaults
    (but its --count: the shipped model was measured on 300 captions per split)."""
    from pathlib import Path

    shipped = Path(__file__).parent.parent / "resources" / "models" / "eval.json"
    stored = json.loads(shipped.read_text())["config"]
    assert stored["count"] == 300
    assert evaluate.EvalConfig(count=300).to_dict() == stored
    assert list(evaluate.EvalConfig().to_dict()) == list(stored)
    config = evaluate.EvalConfig(sampling=SamplingOptions(n=3, top_p=0.9, guidance=2.0))
    assert config.samples == 3
    assert config.options(7) == SamplingOptions(n=3, top_p=0.9, guidance=2.0, seed=7)
    assert config.sampling.seed is None  # options() made a new one
    assert config.to_dict()["top_p"] == 0.9 and config.to_dict()["samples"] == 3


def test_eval_command_refuses_bad_sampling_flags_in_one_line(tmp_path, capsys):
    """A sampling flag out of range is bad input (exit 2, one line), found before the bundle is
    loaded; it used to surface mid-run as an unexpected error."""
    bundle = tiny_bundle_file(tmp_path)
    for flag, value in (("--temperature", "0"), ("--top-p", "1.5"), ("--guidance", "-1")):
        assert cli.main(["eval", "--bundle", str(bundle), flag, value, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and flag[2:] in err and value in err, err


def test_bundle_command_puts_an_eval_summary_into_the_card(report, tmp_path, capsys):
    from model.bundle import read_card

    bundle = tiny_bundle_file(tmp_path)
    report = json.loads(json.dumps(report, default=str))  # as read back from --json
    report["seen"]["caption"]["right_captions"] = ["a red circle in the top left", "two stars"]
    path = eval_report.write_json(report, tmp_path / "eval.json")
    out = tmp_path / "with-eval.dalle.safetensors"
    argv = ["bundle", "--transformer", str(bundle), "--eval", str(path), "--out", str(out)]
    assert cli.main(argv + ["--name", "scenes test"]) == 0
    card = read_card(out)
    assert card["name"] == "scenes test"
    assert card["eval"]["headline"] == report["headline"]
    assert card["example_captions"] == ["two stars", "a red circle in the top left"]
    (tmp_path / "bad.json").write_text('{"seen": 1}')
    argv[4] = str(tmp_path / "bad.json")
    argv[-1] = str(tmp_path / "never.dalle.safetensors")
    assert cli.main(argv) != 0
    assert "not a dalle eval report" in capsys.readouterr().err
    assert not (tmp_path / "never.dalle.safetensors").exists()


class _PerfectVAE:
    """Stands in for a dVAE: tokens are image indices, decoding gives back the image itself."""

    class config:  # noqa: N801 - mirrors DVAEConfig's attribute
        vocab_size = 8

    def __init__(self, images, blank=False):
        self.images, self.blank = images, blank

    def encode(self, x):
        index = [next(i for i, im in enumerate(self.images) if torch.equal(im, y)) for y in x]
        return torch.tensor(index).view(-1, 1, 1)

    def decode(self, tokens):
        out = self.images[tokens.flatten()]
        return out.mul(0).add(out.mean()) if self.blank else out


def test_reconstruction_ceiling_reads_the_dvae_output():
    """The ceiling is 100% when the dVAE draws the scene exactly and 0% when it draws a flat
    image: it scores what the dVAE decodes, against each image's own caption."""
    from types import SimpleNamespace

    images, specs = evaluate.scene_batch("seen", 6, 64, 11)
    for blank, expected in ((False, 1.0), (True, 0.0)):
        bundle = SimpleNamespace(vae=_PerfectVAE(images, blank), device="cpu")
        recon = evaluate.reconstruction(bundle, images, specs, batch=4)
        assert recon["caption_right"] == expected
        assert set(recon["caption_right_by_fact"]) >= {"present", "count", "background"}
        assert recon["caption_right_by_fact"]["present"] == expected
        assert recon["images"] == 6


def _caption_folder(folder, n=5):
    """``n`` captioned pictures of mixed sizes, one picture without a caption."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(n):
        pixels = rng.integers(0, 256, (40 + 8 * index, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
        (folder / f"{index}.txt").write_text(f"a red circle number {index}\n")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "uncaptioned.png")
    return folder


def test_folder_report_measures_a_users_own_pairs(tmp_path):
    folder = _caption_folder(tmp_path / "held-out")
    report = evaluate.evaluate_folder(tiny_bundle(), folder, count=3)
    assert (report["pairs"], report["pairs_in_folder"]) == (3, 5)
    assert report["skipped"] == {"no_caption": 1, "unreadable": 0}
    assert report["reconstruction"]["images"] == 3
    assert np.isfinite(report["reconstruction"]["psnr_db"])
    assert 1.0 < report["bits_per_image_token"] < 10.0  # random weights: about 5 bits
    assert "retrieval" not in report  # the tiny bundle carries no reranker
    text = eval_report.format_folder_report(report)
    assert "3 of 5" in text and "bits per image token" in text and "not measured" in text


def test_retrieval_counts_top1_hits_both_ways():
    """A reranker that embeds image i and caption i alike finds every pair; one that pairs each
    image with the next caption finds none."""
    from types import SimpleNamespace

    images = torch.arange(5.0).view(5, 1, 1, 1)
    captions = [str(i) for i in range(5)]
    tokenizer = SimpleNamespace(encode=lambda lines: torch.tensor([int(c) for c in lines]))
    for shift, expected in ((0, 1.0), (1, 0.0)):

        class Stub:
            def eval(self):
                return self

            def embed(self, x, text, shift=shift):
                image = torch.eye(8)[x.flatten().long()]
                return image, torch.eye(8)[(text + shift) % len(x)]

        bundle = SimpleNamespace(reranker=Stub(), tokenizer=tokenizer, device="cpu")
        found = evaluate.retrieval(bundle, images, captions, group=5)
        assert found == {
            "group": 5,
            "pairs": 5,
            "image_to_caption": expected,
            "caption_to_image": expected,
        }


def test_eval_data_command_writes_json_and_refuses_an_empty_folder(tmp_path, capsys):
    bundle = tiny_bundle_file(tmp_path)
    folder = _caption_folder(tmp_path / "mine", n=2)
    out = tmp_path / "folder.json"
    argv = ["eval", "--bundle", str(bundle), "--data", str(folder), "--quiet"]
    assert cli.main(argv + ["--json", str(out)]) == 0
    assert "tokenizer PSNR" in capsys.readouterr().out
    assert json.loads(out.read_text())["pairs"] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    never = tmp_path / "never.json"
    argv = ["eval", "--bundle", str(bundle), "--data", str(empty), "--json", str(never)]
    assert cli.main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no image–caption pairs" in err and str(empty) in err
    assert not never.exists()
    assert cli.main(["eval", "--bundle", str(bundle), "--data", str(tmp_path / "nope")]) != 0
    assert "not found" in capsys.readouterr().err


def _tile_origin(k: int, n_references: int, size: int) -> tuple[int, int]:
    """Top-left corner of tile ``k`` in the first row of a contact sheet (its frame's corner)."""
    side = size * evaluate.SHEET_SCALE + 2 * evaluate._FRAME
    x = evaluate._GAP + k * (side + evaluate._GAP) + (2 * evaluate._GAP if k >= n_references else 0)
    return x, evaluate._LINE + evaluate._GAP + 2 * evaluate._LINE


def test_contact_sheet_frames_each_candidate_by_the_scorers_verdict():
    rendered, spec = scenes.render_scene(5, 0, 64)
    right = np.asarray(rendered)
    wrong = np.zeros_like(right)
    results = [scenes.score(image, spec.stated) for image in (wrong, right)]
    assert [r.correct for r in results] == [False, True]
    row = evaluate.SheetRow(spec.caption, [(right, None)], [wrong, right], results)
    sheet = np.asarray(evaluate.contact_sheet([row, row], "title"))
    side = 64 * evaluate.SHEET_SCALE + 2 * evaluate._FRAME
    assert sheet.shape[0] > 2 * side and sheet.shape[1] >= 3 * side
    colours = evaluate._VERDICT_COLOURS
    for k, (verdict, image) in enumerate(((None, right), (False, wrong), (True, right))):
        x, y = _tile_origin(k, 1, 64)
        assert tuple(sheet[y, x]) == colours[verdict], f"tile {k}'s frame"
        # inside the frame: the image, drawn at SHEET_SCALE
        inner = sheet[y + evaluate._FRAME : y + side - evaluate._FRAME, x + evaluate._FRAME :]
        inner = inner[:, : side - 2 * evaluate._FRAME]
        s = evaluate.SHEET_SCALE
        assert np.array_equal(inner[::s, ::s], image), f"tile {k}'s picture"
    with pytest.raises(ValueError, match="at least one row"):
        evaluate.contact_sheet([], "title")


def test_eval_draws_a_sheet_per_section_and_split(tmp_path, capsys):
    sheets, bundle = {}, tiny_bundle()
    config = evaluate.EvalConfig(
        count=2, recon_count=2, precision="fp32", sampling=SamplingOptions(n=3)
    )
    evaluate.evaluate(bundle, config, sheets=sheets)
    assert set(sheets) == {f"{p}_{s}" for p in ("caption", "completion") for s in evaluate.SPLITS}
    size = bundle.config.vae.image_size
    side = size * evaluate.SHEET_SCALE + 2 * evaluate._FRAME
    row = 2 * evaluate._LINE + side + evaluate._GAP
    for name, sheet in sheets.items():
        # two rows of 2 references and 3 candidates each, under a title line
        assert sheet.width >= 5 * (side + evaluate._GAP) + 3 * evaluate._GAP, name
        assert sheet.height == evaluate._LINE + evaluate._GAP + 2 * row, name
        # the last candidate's frame says right or wrong: every candidate is scored
        x, y = _tile_origin(4, 2, size)
        frame = tuple(np.asarray(sheet)[y, x])
        assert frame in {evaluate._VERDICT_COLOURS[v] for v in (True, False)}, name

    bundle = tiny_bundle_file(tmp_path)
    argv = ["eval", "--bundle", str(bundle), "--count", "1", "--samples", "2"]
    argv += ["--recon-count", "1", "--quiet", "--precision", "fp32"]
    assert cli.main(argv + ["--sheets", str(tmp_path / "sheets")]) == 0
    written = sorted(p.name for p in (tmp_path / "sheets").iterdir())
    assert written == sorted(f"{name}.png" for name in sheets)
    capsys.readouterr()
    folder = _caption_folder(tmp_path / "mine", n=2)
    argv = ["eval", "--bundle", str(bundle), "--data", str(folder), "--sheets", str(tmp_path)]
    assert cli.main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--sheets" in err and "--data" in err
