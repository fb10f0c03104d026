"""How long the studio's Qt event loop stalls while a CPU generation runs on the worker thread.

Opens the real main window offscreen on the app's qasync loop, starts a completion through the
engine exactly as Ctrl+Enter does (live rows decoded on the worker, one repaint per row), and
meanwhile ticks a 5 ms QTimer on the Qt thread. The stall is the longest gap between two ticks
beyond the timer's interval. The bundle is the embedded default when installed (or
``--bundle``), else a random-weight bundle of a realistic shape built in memory (the speed of a
generation does not depend on the weights).

    python benchmarks/studio_responsiveness.py [--bundle PATH] [--candidates 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TICK_MS = 5


def synthetic_bundle(grid: int = 16, dim: int = 256, depth: int = 8):
    """A random-weight bundle: 128 px images, 16x16 tokens, a 256-wide 8-layer transformer."""
    import torch

    from model.bundle import Bundle
    from model.config import BundleConfig, DVAEConfig, TextConfig, TransformerConfig
    from model.networks.dvae import DVAE
    from model.networks.transformer import Transformer
    from model.tokenizers.text import CaptionTokenizer

    torch.manual_seed(0)
    vae = DVAEConfig(
        image_size=grid * 8, n_groups=4, n_hid=32, n_blk_per_group=1, vocab_size=1024, n_init=64
    )
    captions = ["a red circle in the top left", "two blue squares", "a green ring"] * 8
    tokenizer = CaptionTokenizer.train(captions, vocab_size=300, text_len=32)
    text = TextConfig(vocab_size=tokenizer.vocab_size, text_len=tokenizer.text_len)
    transformer = TransformerConfig(
        text_vocab=tokenizer.vocab_size,
        text_len=tokenizer.text_len,
        image_vocab=1024,
        grid=vae.grid,
        dim=dim,
        depth=depth,
        heads=8,
        conv_kernel=3,
    )
    config = BundleConfig(vae=vae, text=text, transformer=transformer)
    return Bundle(
        config=config,
        vae=DVAE(vae).eval(),
        transformer=Transformer(transformer).eval(),
        tokenizer=tokenizer,
        card={"name": "synthetic benchmark bundle"},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="a *.dalle.safetensors (default: embedded or synthetic)")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=512, help="the user's image, pixels")
    args = parser.parse_args()

    os.environ["QT_API"] = "pyside6"
    import asyncio

    import numpy as np
    import qasync
    from PySide6.QtCore import QElapsedTimer, QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    from model.bundle import default_bundle_path, load
    from studio import engine as messages
    from studio.document import Document
    from studio.engine import Engine
    from studio.session import Session
    from studio.widgets.main_window import MainWindow

    _app = QApplication(sys.argv[:1])  # kept alive for the whole run
    path = args.bundle or (default_bundle_path() if default_bundle_path().exists() else None)
    bundle = load(path, "cpu") if path else synthetic_bundle()
    name = str(path) if path else "synthetic 16x16-token bundle (dim 256, depth 8)"
    engine = Engine()
    engine.set_bundle(bundle)
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / "studio-responsiveness"
    settings = QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(Session(engine), settings, autosave_folder=folder)
    window.ask_before_close = False
    window.show()
    size = args.image_size
    rng = np.random.default_rng(0)
    window.session.set_document(Document(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
    window.document.set_rectangle_from_pixel(size // 4, size // 4)
    window.caption.candidates.setValue(args.candidates)
    window.caption.caption.setText("a red circle")

    clock = QElapsedTimer()
    gaps: list[float] = []
    state = {"last": None, "rows": 0}

    def tick():
        now = clock.nsecsElapsed() / 1e6
        if state["last"] is not None:
            gaps.append(now - state["last"])
        state["last"] = now

    async def run() -> object:
        # the app's own loop: qasync drives Qt, as in studio.app
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def on_message(message):
            if isinstance(message, messages.RowDecoded):
                state["rows"] += 1
            elif not done.done():
                done.set_result(message)

        engine.message.connect(on_message)
        timer = QTimer()
        timer.setInterval(TICK_MS)
        timer.timeout.connect(tick)
        await asyncio.sleep(0.2)
        clock.start()
        timer.start()
        window.session.generate()
        result = await done
        await asyncio.sleep(0.05)  # the window's own handling of the last message counts too
        timer.stop()
        return result

    started = time.perf_counter()
    result = qasync.run(run())
    seconds = time.perf_counter() - started
    engine.shutdown()
    if not isinstance(result, messages.Finished):
        print(f"generation did not finish: {result}")
        return 1
    stalls = np.array(gaps) - TICK_MS
    print(
        f"bundle: {name}; cells: {window.document.masked_cells}; "
        f"image: {size}x{size}; candidates: {args.candidates}; "
        f"torch threads: {__import__('torch').get_num_threads()}"
    )
    print(
        f"generation: {result.seconds:.1f} s, {result.tokens_per_s:.0f} tokens/s, "
        f"{state['rows']} live rows; wall {seconds:.1f} s"
    )
    print(
        f"event loop ticks: {len(gaps)}; stall beyond the {TICK_MS} ms tick: "
        f"p50 {np.percentile(stalls, 50):.1f} ms, p99 {np.percentile(stalls, 99):.1f} ms, "
        f"longest {stalls.max():.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
