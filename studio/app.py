"""Entry point of the desktop app (``dalle-studio``): QApplication, the qasync loop, the window.

The window is shown before the model finishes loading: the bundle loads on the engine's worker
thread. ``--selftest`` opens the window (offscreen unless a display is asked for), runs one
completion, saves a screenshot and a project into a temporary folder and exits 0 on success.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("studio")

APP_NAME = "DALL-E Studio"
SELFTEST_TIMEOUT_S = 600


def icon_path() -> Path:
    """The app icon, found the same way from source, installed or frozen (it is package data)."""
    from importlib import resources

    return Path(str(resources.files("resources") / "icons" / "dalle-studio.png"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dalle-studio", description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", help="an image or .dstudio project to open")
    parser.add_argument("--bundle", help="model bundle (*.dalle.safetensors); default: embedded")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], help="default: settings")
    parser.add_argument(
        "--selftest",
        action="store_true",
        help="open, run one completion, save a screenshot and a project, exit",
    )
    parser.add_argument("--selftest-dir", help="where --selftest writes (default: a temp folder)")
    return parser.parse_args(argv)


def _ensure_streams() -> None:
    # A windowed (PyInstaller --noconsole) build has no stdout/stderr; writing would raise.
    if sys.stdout is None:
        sys.stdout = io.StringIO()
    if sys.stderr is None:
        sys.stderr = io.StringIO()


def _setup_logging(folder: Path) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    try:
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(folder / "logs" / "studio.log", encoding="utf-8"))
    except OSError:
        pass  # a read-only home must not stop the app
    logging.basicConfig(
        level=logging.INFO,
        handlers=handlers,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> int:
    import multiprocessing

    multiprocessing.freeze_support()  # frozen builds: a spawned worker must not start the app
    _ensure_streams()
    args = parse_args(argv)
    if args.selftest:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from studio import preflight

    cannot_start = preflight.problem()
    if cannot_start:  # Qt itself would abort the process with a misleading message
        print(f"dalle-studio: {cannot_start}", file=sys.stderr)
        return 2
    os.environ["QT_API"] = "pyside6"  # qasync picks its binding from this at import
    import qasync
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName(APP_NAME)
    app.setApplicationName(APP_NAME)
    from PySide6.QtGui import QIcon

    app.setWindowIcon(QIcon(str(icon_path())))
    if sys.version_info >= (3, 12):
        return asyncio.run(main_async(app, args), loop_factory=qasync.QEventLoop)
    return qasync.run(main_async(app, args))  # the same, for Python < 3.12


async def main_async(app, args: argparse.Namespace) -> int:
    from PySide6.QtCore import QSettings, QTimer

    from studio import project, qt_references
    from studio.engine import Engine
    from studio.session import Session
    from studio.widgets.main_window import MainWindow

    if args.selftest:
        folder = Path(args.selftest_dir or tempfile.mkdtemp(prefix="dalle-studio-selftest-"))
        folder.mkdir(parents=True, exist_ok=True)
        settings = QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat)
        autosave_folder = folder
    else:
        folder = project.data_dir()
        settings = QSettings()
        autosave_folder = None
    _setup_logging(folder)
    qt_references.keep_alive()  # before the engine's thread: PySide6 6.12 on Python < 3.12
    engine = Engine()
    session = Session(engine)
    window = MainWindow(session, settings, autosave_folder)
    window.show()
    log.info("window shown")  # benchmarks/startup.py reads this line's time stamp
    device = args.device or str(settings.value("device", "auto"))
    bundle = args.bundle or str(settings.value("bundle", "")) or None
    if args.selftest:
        window.ask_before_close = False
        try:
            return await selftest(window, bundle, device, folder)
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
            print("selftest: FAILED: timed out waiting for the engine", file=sys.stderr)
            return 1
        finally:
            window.close()
            engine.shutdown()
    end_gracefully_on_sigterm(window)
    session.load(bundle, device)
    if args.file:
        window.open_path(args.file)
    QTimer.singleShot(0, window.offer_recovery)
    closed = asyncio.Event()
    app.aboutToQuit.connect(closed.set)
    app.lastWindowClosed.connect(app.quit)
    await closed.wait()
    engine.shutdown()
    return 0


def end_gracefully_on_sigterm(window) -> None:
    """SIGTERM (a logout, a shutdown, a `kill`) ends the app the way a crash cannot: whatever
    Python is doing finishes first (a save completes instead of leaving a temporary file), then
    the window keeps modified work in the autosave and closes without asking."""
    import signal

    from PySide6.QtCore import QTimer

    def on_sigterm(signum, frame):
        QTimer.singleShot(0, window.terminate)

    signal.signal(signal.SIGTERM, on_sigterm)
    # Python runs a signal handler only between its own bytecodes; while Qt waits in C++ for
    # events, this timer lets it in a few times a second
    wake = QTimer(window)
    wake.timeout.connect(lambda: None)
    wake.start(200)


def _next_message(engine, kinds: tuple[type, ...], timeout: float):
    """An awaitable for the next engine message of ``kinds``, listening from this call on.

    A plain function, not a coroutine: the slot must be connected before the job starts, or a
    fast worker's message would be emitted with nobody listening.
    """
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def receive(message):
        if isinstance(message, kinds) and not future.done():
            future.set_result(message)
            engine.message.disconnect(receive)

    engine.message.connect(receive)
    return asyncio.wait_for(future, timeout)


def selftest_image(width: int = 320, height: int = 240):
    """A gradient larger than the embedded model's 128 px, so the shipped upscaler draws the
    result (2.5 picture pixels per model pixel) and the self-test shows it runs."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    return image.astype(np.uint8)


async def selftest(window, bundle: str | None, device: str, folder: Path) -> int:
    import numpy as np

    from model.files import atomic_path
    from studio import engine as messages
    from studio import project
    from studio.document import Document

    started = time.perf_counter()
    report: dict = {"folder": str(folder)}
    session = window.session
    loading = _next_message(session.engine, (messages.Loaded, messages.LoadFailed), 300)
    session.load(bundle, device)
    loaded = await loading
    if isinstance(loaded, messages.LoadFailed):
        print(f"selftest: FAILED to load the model: {loaded.message}", file=sys.stderr)
        return 1
    report["model"] = loaded.path
    image = selftest_image()
    session.set_document(Document(image.copy()))
    cell = window.document.set_rectangle_from_pixel(image.shape[1] // 2, image.shape[0] // 2)
    examples = loaded.card.get("example_captions") or ["a red circle"]
    window.caption.caption.setText(str(examples[0]))
    window.caption.candidates.setValue(2)
    finishing = _next_message(
        session.engine, (messages.Finished, messages.Failed, messages.Cancelled), SELFTEST_TIMEOUT_S
    )
    if session.generate() is None:
        print(f"selftest: FAILED to start: {window.errors}", file=sys.stderr)
        return 1
    result = await finishing
    await asyncio.sleep(0.05)  # let the session handle the message too
    if not isinstance(result, messages.Finished):
        print(f"selftest: FAILED: {result}", file=sys.stderr)
        return 1
    x, y, _, _ = window.document.rectangle_pixels()
    outside = np.ones(image.shape[:2], bool)
    outside[y:, x:] = False
    for candidate in result.candidates:
        if not np.array_equal(candidate[outside], image[outside]):
            print("selftest: FAILED: pixels outside the rectangle changed", file=sys.stderr)
            return 1
    window.document.accept_candidate()
    screenshot = folder / "selftest.png"
    with atomic_path(screenshot) as temp:  # the one atomic writer, as every other output
        if not window.grab().save(str(temp), "PNG"):
            raise OSError(f"could not write {screenshot}")
    saved = project.save(window.document, folder / "selftest.dstudio")
    reloaded = project.load(saved)
    if not np.array_equal(reloaded.image, window.document.image):
        print("selftest: FAILED: the project did not round-trip", file=sys.stderr)
        return 1
    report.update(
        cell=list(cell),
        seed=result.seed,
        tokens_per_s=round(result.tokens_per_s, 1),
        screenshot=str(screenshot),
        project=str(saved),
        seconds=round(time.perf_counter() - started, 2),
    )
    print("selftest: OK " + json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
