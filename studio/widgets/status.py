"""The main window's status bar: what the generation does now (its phase, or the row it samples,
with an ETA), the progress bar, the speed, the model and device, and the far-from-training hint.

``build`` makes the labels as the window's attributes (``progress``, ``progress_label``,
``speed_label``…); ``show_row`` and ``show_phase`` show a job's progress. The bar is busy (no
percentage) while a phase cannot be counted (reading, encoding, decoding the picture), counts the
rows while sampling and the candidates while pasting: it never sits at 0 % or 100 % while the
work it does not count goes on.
"""

from __future__ import annotations

import math

from PySide6.QtWidgets import QLabel, QProgressBar, QSizePolicy

from studio.familiarity_hint import FAR_BADGE

HINT_COLOUR = "color: #b35900"


def build(window) -> None:
    window.progress = QProgressBar()
    window.progress.setMaximumWidth(220)
    window.progress.setVisible(False)
    window.progress_label = QLabel()
    window.device_label = QLabel("device: —")
    window.model_label = QLabel()
    window.speed_label = QLabel("")
    # a picture far from the model's world: the whole line says so until the user marks a
    # rectangle or generates, then the badge keeps saying it (studio.familiarity_hint)
    window.hint_label = QLabel()
    window.hint_label.setStyleSheet(HINT_COLOUR)
    window.hint_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    window.hint_label.setVisible(False)
    window.far_badge = QLabel(FAR_BADGE)
    window.far_badge.setStyleSheet(HINT_COLOUR)
    window.far_badge.setVisible(False)
    bar = window.statusBar()
    bar.addWidget(window.hint_label, 1)  # never widens the window: it gets what is left
    bar.addWidget(window.progress_label)
    bar.addWidget(window.progress)
    for label in (window.far_badge, window.speed_label, window.model_label, window.device_label):
        bar.addPermanentWidget(label)


def eta_text(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "ETA …"
    return "ETA <1 s" if seconds < 1 else f"ETA {seconds:.0f} s"


def show_row(window, rows_done: int, rows_total: int, speed: float, eta: float) -> None:
    """Sampling: row ``rows_done`` of ``rows_total`` is in; ``eta`` counts decoding and
    pasting the candidates too."""
    window.progress.setRange(0, rows_total)
    window.progress.setValue(rows_done)
    window.progress_label.setText(
        f"Sampling row {rows_done}/{rows_total} · {speed:.0f} tokens/s · {eta_text(eta)}"
    )
    window.speed_label.setText(f"{speed:.0f} tokens/s")


def show_phase(window, phase: str, step: int, steps: int) -> None:
    """A phase besides sampling (the session's status line says which): the bar counts its
    steps, or is busy when it has none to count."""
    if steps > 0:
        window.progress.setRange(0, steps)
        window.progress.setValue(step)
    else:
        window.progress.setRange(0, 0)
