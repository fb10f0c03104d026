"""CaptionFolder: scanning, skipping, image conversion, cropping."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from model.data.folder import CaptionFolder, load_rgb
from model.data.scenes import write_scenes
from model.files import to_rgb

RED, BLUE = (255, 0, 0), (0, 0, 255)


def save_pair(path, image: Image.Image, caption: str | None = "a thing", **save_args):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save_args)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)


def test_reads_pairs_recursively_in_every_format(tmp_path):
    save_pair(tmp_path / "a.png", Image.new("RGB", (40, 30), RED), "a red image")
    save_pair(
        tmp_path / "sub" / "b.JPG", Image.new("RGB", (30, 50), BLUE), "a blue image", format="JPEG"
    )
    save_pair(tmp_path / "sub" / "deeper" / "c.jpeg", Image.new("RGB", (64, 64), RED))
    save_pair(tmp_path / "d.webp", Image.new("RGB", (20, 20), BLUE))
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / "a.json").write_text("{}")
    data = CaptionFolder(tmp_path, image_size=16, augment=False)
    assert len(data) == 4 and data.skipped_no_caption == data.skipped_unreadable == 0
    captions = set()
    for i in range(len(data)):
        image, caption = data[i]
        assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
        assert image.shape == (3, 16, 16)
        assert 0.0 <= image.min() and image.max() <= 1.0
        captions.add(caption)
    assert {"a red image", "a blue image", "a thing"} == captions
    red = data[[p.name for p, _ in data.samples].index("a.png")][0]
    assert torch.allclose(red[:, 8, 8], torch.tensor([1.0, 0.0, 0.0]))


def test_reads_the_products_image_suffixes_bmp_included(tmp_path):
    save_pair(tmp_path / "a.bmp", Image.new("RGB", (12, 12), BLUE), "a blue bitmap")
    data = CaptionFolder(tmp_path, image_size=8, augment=False)
    image, caption = data[0]
    assert len(data) == 1 and caption == "a blue bitmap"
    assert torch.allclose(image[:, 4, 4], torch.tensor([0.0, 0.0, 1.0]))


def test_skips_captionless_and_unreadable_files_with_one_warning(tmp_path, caplog):
    save_pair(tmp_path / "good.png", Image.new("RGB", (8, 8), RED))
    save_pair(tmp_path / "lonely.png", Image.new("RGB", (8, 8), RED), caption=None)
    save_pair(tmp_path / "blank.png", Image.new("RGB", (8, 8), RED), caption="  \n\n")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "broken.txt").write_text("a broken image")
    (tmp_path / "garbage.jpg").write_bytes(b"hello")
    (tmp_path / "garbage.txt").write_text("not a jpeg")
    (tmp_path / "._good.png").write_bytes(b"macOS resource fork")  # hidden: ignored, not counted
    with caplog.at_level(logging.WARNING, logger="model.data.folder"):
        data = CaptionFolder(tmp_path, image_size=8)
    assert len(data) == 1
    assert data.skipped_no_caption == 2 and data.skipped_unreadable == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "4 of 5" in warnings[0].getMessage() and str(tmp_path) in warnings[0].getMessage()


def test_empty_or_captionless_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"no image.caption pairs found in .*" + tmp_path.name):
        CaptionFolder(tmp_path, image_size=8)
    save_pair(tmp_path / "a.png", Image.new("RGB", (8, 8)), caption=None)
    with pytest.raises(ValueError, match=r"no image.caption pairs found"):
        CaptionFolder(tmp_path, image_size=8)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CaptionFolder(tmp_path / "nowhere", image_size=8)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="file.png"):
        CaptionFolder(tmp_path / "file.png", image_size=8)


def test_exif_orientation_is_honoured(tmp_path):
    # Stored landscape, red left half and blue right half; EXIF 6 says "rotate 90° clockwise to
    # display", which puts the red half on top.
    raw = Image.new("RGB", (40, 20), RED)
    raw.paste(BLUE, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    save_pair(tmp_path / "rotated.jpg", raw, format="JPEG", quality=95, exif=exif)
    upright = load_rgb(tmp_path / "rotated.jpg")
    assert upright.size == (20, 40)
    pixels = np.asarray(upright, dtype=int)
    assert np.abs(pixels[5, 10] - RED).max() < 40 and np.abs(pixels[35, 10] - BLUE).max() < 40
    image, _ = CaptionFolder(tmp_path, image_size=8, augment=False)[0]
    assert image[0, 0, 4] > 0.8 and image[2, 0, 4] < 0.2  # top row red
    assert image[2, 7, 4] > 0.8 and image[0, 7, 4] < 0.2  # bottom row blue


def test_alpha_palette_and_greyscale_become_rgb():
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    half = Image.new("RGBA", (4, 4), (255, 0, 0, 128))
    r, g, b = to_rgb(half).getpixel((0, 0))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.info["transparency"] = 0
    converted = to_rgb(palette)
    assert converted.mode == "RGB"
    assert converted.getpixel((0, 0)) == (255, 255, 255) and converted.getpixel((1, 1)) == (
        0,
        255,
        0,
    )
    assert to_rgb(Image.new("L", (4, 4), 77)).getpixel((0, 0)) == (77, 77, 77)
    assert to_rgb(Image.new("LA", (4, 4), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    deep = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert to_rgb(deep).getpixel((0, 0)) == (255, 255, 255)


def test_transparent_png_file_reads_on_white(tmp_path):
    image = Image.new("RGBA", (10, 10), (0, 0, 255, 0))
    image.paste((0, 0, 255, 255), (0, 5, 10, 10))
    save_pair(tmp_path / "alpha.png", image)
    tensor, _ = CaptionFolder(tmp_path, image_size=10, augment=False)[0]
    assert torch.allclose(tensor[:, 1, 5], torch.ones(3))
    assert torch.allclose(tensor[:, 8, 5], torch.tensor([0.0, 0.0, 1.0]))


def test_centre_crop_and_random_crop(tmp_path):
    # Wide image: red | blue | red in thirds; the centre square is all blue.
    wide = Image.new("RGB", (90, 30), RED)
    wide.paste(BLUE, (30, 0, 60, 30))
    save_pair(tmp_path / "wide.png", wide, "line one\nline two\n\nline three")
    plain = CaptionFolder(tmp_path, image_size=12, augment=False)
    image, caption = plain[0]
    assert caption == "line one"
    assert torch.allclose(image[:, 6, 6], torch.tensor([0.0, 0.0, 1.0]), atol=0.02)
    assert torch.equal(image, plain[0][0])  # no randomness without augment
    torch.manual_seed(0)
    augmented = CaptionFolder(tmp_path, image_size=12, augment=True)
    outputs = [augmented[0] for _ in range(20)]
    assert all(image.shape == (3, 12, 12) for image, _ in outputs)
    assert all(0 <= image.min() and image.max() <= 1 for image, _ in outputs)
    assert len({image.sum().item() for image, _ in outputs}) > 1  # crops differ
    assert {caption for _, caption in outputs} == {"line one", "line two", "line three"}


def test_image_corrupted_after_the_scan_falls_back_to_the_next(tmp_path, caplog):
    save_pair(tmp_path / "a.png", Image.new("RGB", (8, 8), RED), "first")
    save_pair(tmp_path / "b.png", Image.new("RGB", (8, 8), BLUE), "second")
    data = CaptionFolder(tmp_path, image_size=8, augment=False)
    (tmp_path / "a.png").write_bytes(b"gone")
    with caplog.at_level(logging.WARNING, logger="model.data.folder"):
        _, caption = data[0]
    assert caption == "second" and "a.png" in caplog.text


def test_reads_a_scenes_folder(tmp_path):
    write_scenes(tmp_path, 6, seed=1, size=32, workers=1)
    data = CaptionFolder(tmp_path, image_size=32, augment=False)
    assert len(data) == 6 and data.skipped_no_caption == 0
    image, caption = data[2]
    assert caption == (tmp_path / "000002.txt").read_text().strip()
    stored = np.asarray(Image.open(tmp_path / "000002.png"), dtype=np.float32) / 255
    assert np.allclose(image.permute(1, 2, 0).numpy(), stored, atol=1e-6)
