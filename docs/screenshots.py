"""Take the README's screenshots in a real window (run under Xvfb):

    xvfb-run -s "-screen 0 1280x800x24" python docs/screenshots.py

Uses the embedded default bundle when installed, else the random-weight benchmark bundle (its
regenerated regions are noise, but every panel behaves as with a trained model).
"""

from __future__ import annotations

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


def main() -> int:
    import numpy as np
    from PySide6.QtCore import QSettings, QTimer
    from PySide6.QtWidgets import QApplication
    from studio_responsiveness import synthetic_bundle

    from model.bundle import default_bundle_path, load
    from model.transformer import resolve_precision
    from studio import engine as messages
    from studio.document import Document
    from studio.engine import Engine
    from studio.session import Session
    from studio.widgets.main_window import MainWindow

    app = QApplication(sys.argv[:1])
    out = ROOT / "docs"
    bundle = load(default_bundle_path()) if default_bundle_path().exists() else synthetic_bundle()
    caption = "a yellow circle in the bottom right on a green background"
    bundle.card.setdefault("example_captions", [caption])
    engine = Engine()
    session = Session(engine)
    folder = Path("/tmp/studio-screenshots")
    window = MainWindow(
        session,
        QSettings(str(folder / "s.ini"), QSettings.Format.IniFormat),
        autosave_folder=folder,
    )
    window.ask_before_close = False
    window.resize(1200, 760)
    window.show()

    def shoot(name: str) -> None:
        window.centralWidget().layout().activate()
        app.processEvents()
        screen = window.screen()
        pixmap = screen.grabWindow(window.winId()) if screen else window.grab()
        if pixmap.isNull() or pixmap.width() < 100:
            pixmap = window.grab()
        save(pixmap, out / name)

    state = {"rows": 0, "phase": None}

    def after_load():
        shoot("01-empty.png")
        engine.set_bundle(bundle)
        session.handle(
            messages.Loaded(
                "synthetic",
                "cpu",
                bundle.card.get("name", "model"),
                bundle.card,
                bundle.config.vae.image_size,
                bundle.config.vae.factor,
                resolve_precision(engine.precision, "cpu"),
                bundle.tokenizer,
            )
        )
        window.session.set_document(Document(np.asarray(picture(), dtype=np.uint8)))
        window.document.source_path = "scene.png"
        window.grid_action.setChecked(True)
        window.canvas.set_show_grid(True)
        window.document.set_rectangle_from_pixel(260, 200)
        window.caption.caption.setText(caption)
        window.caption.candidates.setValue(4)
        session.record_speed(150.0, 4)  # the rectangle's ETA, as after a run at 150 tokens/s
        shoot("02-rectangle.png")
        window.canvas.set_show_grid(False)
        state["phase"] = "first"
        session.generate()

    def on_message(message):
        if isinstance(message, messages.RowDecoded) and state["phase"] == "first":
            state["rows"] += 1
            if state["rows"] == 4:
                QTimer.singleShot(0, lambda: shoot("03-generating.png"))
        elif isinstance(message, messages.Finished):
            QTimer.singleShot(20, finished)

    def finished():
        phase = state["phase"]
        if phase == "first":
            window.document.select_candidate(1)  # browsing: the second best
            shoot("04-candidates.png")
            window.document.accept_candidate()
            first = window.document.current_entry
            state["first"] = first
            state["phase"] = "second"
            window.document.set_rectangle_from_pixel(380, 120)
            window.caption.candidates.setValue(2)
            session.generate()
        elif phase == "second":
            window.document.accept_candidate()
            window.document.restore(state["first"])
            window.document.set_rectangle_from_pixel(200, 260)
            state["phase"] = "branch"
            session.generate()
        else:
            window.document.accept_candidate()
            shoot("05-history.png")
            app.quit()

    engine.message.connect(on_message)
    QTimer.singleShot(300, after_load)
    app.exec()
    engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
