"""Take the README's screenshots in a real window (run under Xvfb):

    xvfb-run -s "-screen 0 1280x800x24" python docs/screenshots.py [--out docs/]

Uses the embedded default bundle when installed, else the random-weight benchmark bundle (its
regenerated regions are noise, but every panel behaves as with a trained model).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MAX_BYTES = 300_000


def picture(size: int = 512):
    """A held-out "scenes" picture, the kind of image the embedded model was trained on."""
    from model.data.scenes import render_scene

    image, _spec = render_scene(11, 9, size=size)  # a black square and a red diamond on green
    return image


def save(pixmap, path: Path) -> None:
    from PIL import Image
    from PySide6.QtCore import QBuffer, QIODevice

    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    pixmap.save(buffer, "PNG")
    image = Image.open(io.BytesIO(bytes(buffer.data()))).convert("RGB")
    image.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:  # random-weight output is noisy: a palette keeps it small
        image.quantize(colors=128, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{path.name}: {path.stat().st_size // 1024} KiB")


class Tour:
    """Opens a picture, marks a rectangle, generates three times (accepting, restoring and
    branching) and shoots the window at each step into ``out``."""

    CAPTION = "a yellow circle in the bottom right on a green background"

    def __init__(self, app, bundle, out: Path):
        from PySide6.QtCore import QSettings

        from studio.engine import Engine
        from studio.session import Session
        from studio.widgets.main_window import MainWindow

        self.app, self.bundle, self.out = app, bundle, out
        bundle.card.setdefault("example_captions", [self.CAPTION])
        self.engine = Engine()
        self.session = Session(self.engine)
        folder = Path("/tmp/studio-screenshots")
        settings = QSettings(str(folder / "s.ini"), QSettings.Format.IniFormat)
        self.window = MainWindow(self.session, settings, autosave_folder=folder)
        self.window.ask_before_close = False
        self.window.resize(1200, 760)
        self.phase, self.rows, self.first_entry = "", 0, None
        self.engine.message.connect(self.count_rows)
        self.session.finished.connect(self.finished)

    def shoot(self, name: str) -> None:
        window = self.window
        window.centralWidget().layout().activate()
        self.app.processEvents()
        screen = window.screen()
        pixmap = screen.grabWindow(window.winId()) if screen else window.grab()
        if pixmap.isNull() or pixmap.width() < 100:
            pixmap = window.grab()
        save(pixmap, self.out / name)

    def start(self) -> None:
        import numpy as np

        from studio import engine as messages
        from studio.document import Document

        self.shoot("01-empty.png")
        bundle, engine, session, window = self.bundle, self.engine, self.session, self.window
        engine.set_bundle(bundle)
        session.handle(
            messages.Loaded(
                path="synthetic",
                device="cpu",
                name=bundle.card.get("name", "model"),
                card=bundle.card,
                size=bundle.config.vae.image_size,
                factor=bundle.config.vae.factor,
                precision=messages.resolve_precision(engine.precision, "cpu"),
                tokenizer=bundle.tokenizer,
            )
        )
        session.set_document(Document(np.asarray(picture(), dtype=np.uint8)))
        window.document.source_path = "scene.png"
        window.grid_action.setChecked(True)
        window.canvas.set_show_grid(True)
        window.document.set_rectangle_from_pixel(260, 200)
        window.caption.caption.setText(self.CAPTION)
        window.caption.candidates.setValue(4)
        session.record_speed(150.0, 4)  # the rectangle's ETA, as after a run at 150 tokens/s
        self.shoot("02-rectangle.png")
        window.canvas.set_show_grid(False)
        self.phase = "first"
        session.generate()

    def count_rows(self, message) -> None:
        from PySide6.QtCore import QTimer

        from studio import engine as messages

        if isinstance(message, messages.RowDecoded) and self.phase == "first":
            self.rows += 1
            if self.rows == 4:
                QTimer.singleShot(0, lambda: self.shoot("03-generating.png"))

    def finished(self) -> None:
        document, session = self.window.document, self.session
        if self.phase == "first":
            document.select_candidate(1)  # browsing: the second best
            self.shoot("04-candidates.png")
            document.accept_candidate()
            self.first_entry = document.current_entry
            self.phase = "second"
            document.set_rectangle_from_pixel(380, 120)
            self.window.caption.candidates.setValue(2)
            session.generate()
        elif self.phase == "second":
            document.accept_candidate()
            document.restore(self.first_entry)
            document.set_rectangle_from_pixel(200, 260)
            self.phase = "branch"
            session.generate()
        else:
            document.accept_candidate()
            self.shoot("05-history.png")
            self.app.quit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="default: docs/")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication
    from studio_responsiveness import synthetic_bundle

    from model.bundle import default_bundle_path, load

    app = QApplication(sys.argv[:1])
    bundle = load(default_bundle_path()) if default_bundle_path().exists() else synthetic_bundle()
    tour = Tour(app, bundle, args.out)
    tour.window.show()
    QTimer.singleShot(300, tour.start)
    app.exec()
    tour.engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
