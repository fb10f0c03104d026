"""The README's File › Import model… screenshots, taken from the real window on an X display.

    Xvfb :92 -screen 0 1600x1000x24 &
    DISPLAY=:92 PYTHONPATH=. python docs/import_screenshots.py docs

Writes ``import_missing.png`` (DALL·E Mega chosen on a folder that lacks its transformer files:
each is named with its repository, the needs come from the released files' sizes),
``import_progress.png`` (an import held midway), ``import_done.png`` (done, "Use it now") and
``import_switched.png`` (the window on the new model). The files are tiny ones in the released
formats (the importers' test writers, ``tests/test_import_mega.py``), converted as "mega" at a
tiny preset: the pictures show the dialog, not Mega's real figures (the first one does show
those, from the released sizes). Each picture is a crop of the root window (ImageMagick's
``import``) to the main window.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

WORK = Path(tempfile.mkdtemp(prefix="import-shots-"))
os.environ["DALLE_STUDIO_MODELS"] = str(WORK / "models")


def wait(app: QApplication, done, seconds: float = 120.0) -> None:
    end = time.monotonic() + seconds
    while not done():
        app.processEvents()
        time.sleep(0.02)
        if time.monotonic() > end:
            raise TimeoutError("the studio did not get there in time")


def settle(app: QApplication, seconds: float = 0.6) -> None:
    end = time.monotonic() + seconds
    wait(app, lambda: time.monotonic() > end)


def shoot(app: QApplication, window, path: Path) -> None:
    settle(app)
    frame = window.frameGeometry()
    crop = f"{frame.width()}x{frame.height()}+{frame.x()}+{frame.y()}"
    subprocess.run(["import", "-window", "root", "-crop", crop, str(path)], check=True)
    print(path)


def bpe_files(folder: Path) -> tuple[Path, Path]:
    """A byte-level BPE as min-dalle's vocab.json and merges.txt (the importers' test writer)."""
    from tests.test_import_mega import write_bpe_files

    return write_bpe_files(folder)


def main(out: Path) -> int:
    from model.importers import dalle_mega
    from model.tokenizers.bart_text import BartTokenizer
    from studio.engine import Engine
    from studio.session import Session
    from studio.widgets.main_window import MainWindow
    from tests.test_import_mega import tiny_bart, write_sources

    bpe = bpe_files(WORK / "bpe")
    preset = tiny_bart(BartTokenizer.from_files(*bpe).vocab_size)
    dalle_mega.PRESETS["mega"] = preset  # the tiny files convert as "mega"
    downloads, partial = WORK / "Downloads" / "dalle-mega", WORK / "Downloads" / "half-done"
    write_sources(downloads, bpe, preset)
    partial.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt", "flax_model.msgpack", "config.json"):
        (partial / name).write_bytes((downloads / name).read_bytes())
    picture = WORK / "coffee.png"
    try:
        from skimage.data import coffee

        Image.fromarray(coffee()).save(picture)
    except ImportError:  # any picture will do
        rng = np.random.default_rng(3)
        Image.fromarray(rng.integers(60, 200, (256, 256, 3), dtype=np.uint8)).save(picture)

    app = QApplication(sys.argv[:1])
    engine = Engine()
    settings = QSettings(str(WORK / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(Session(engine), settings, autosave_folder=WORK)
    window.ask_before_close = False
    window.show()
    window.session.load(None, "cpu")
    wait(app, lambda: window.session.model_state == "loaded")
    window.open_path(picture)

    item = next(a for a in window.actions() if a.text() == "&Import model…")
    item.trigger()  # File › Import model…
    dialog = window.import_dialog
    dialog.choose("mega", partial)
    shoot(app, window, out / "import_missing.png")

    held, release = threading.Event(), threading.Event()
    read_pt = dalle_mega.read_pt

    def held_read(path, role):  # the import waits here until its picture is taken
        held.set()
        release.wait(60)
        return read_pt(path, role)

    dalle_mega.read_pt = held_read
    dialog.choose("mega", downloads, "bf16")
    dialog.start()
    wait(app, held.is_set)
    shoot(app, window, out / "import_progress.png")
    release.set()
    wait(app, lambda: not dialog.running)
    shoot(app, window, out / "import_done.png")
    dialog.use_button.click()
    session = window.session
    wait(app, lambda: session.model_state == "loaded" and "Mega" in session.model_name)
    shoot(app, window, out / "import_switched.png")
    window.close()
    engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")))
