"""Keeps None, True and False alive under a PySide6 that takes a reference to them on every call.

PySide6 6.12.0 returns None from its void methods (``processEvents``, ``setText``, ``QTimer.start``,
``update``...) and True or False from ``Signal.emit`` without giving the caller a reference of its
own (6.11.2 does). From Python 3.12 on those objects are immortal and nothing happens; on 3.10 and
3.11 every such call takes one reference away for good, and when a count reaches zero the
interpreter aborts ("Fatal Python error: none_dealloc" or "bool_dealloc"), in whichever thread made
the last call: the engine's worker, which emits its messages, as well as the Qt thread. A
``processEvents()`` loop drains None's references in a fraction of a second; the app itself drops
about 450 None and 35 True references per generation of the embedded model, which it would not
outlive for long.

``keep_alive()`` measures whether the PySide6 in use drops references (``dropped_references``)
and, where it does, starts a daemon thread that holds a reserve of references to each object it
drops and tops the count back up as calls take references away: a few bytes a dropped reference,
nothing at all with a PySide6 that keeps its counts.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading

log = logging.getLogger(__name__)

SINGLETONS = {"None": None, "True": True, "False": False}
# References held in reserve for each object dropped (8 bytes each): what calls may take away
# between two top-ups. A processEvents() loop drops about 850,000 a second on one core, so this
# lasts it over a second, against a top-up every PERIOD_S.
HEADROOM = 1 << 20
PERIOD_S = 0.01
PROBE_CALLS = 64  # calls of each construct that dropped_references() makes


def dropped_references(calls: int = PROBE_CALLS) -> dict[str, float]:
    """References to None, True and False that one call of a void method and of ``Signal.emit``
    takes away with this PySide6 (only the objects it drops; {} for a PySide6 that keeps its
    counts, or a Python whose singletons are immortal). Call before other threads start: their
    work would move the counts."""
    from PySide6.QtCore import QObject, Signal

    class Probe(QObject):
        pinged = Signal()

    probe = Probe()
    before = {name: sys.getrefcount(value) for name, value in SINGLETONS.items()}
    for _ in range(calls):
        probe.setObjectName("probe")  # a void method: returns None
        probe.pinged.emit()  # returns a bool
    after = {name: sys.getrefcount(value) for name, value in SINGLETONS.items()}
    drops = {name: (before[name] - after[name]) / calls for name in SINGLETONS}
    return {name: drop for name, drop in drops.items() if drop >= 0.5}


class ReferenceKeeper:
    """Holds ``headroom`` references to each named singleton and, every ``period_s`` on its own
    thread, adds as many as the count has fallen below where it stood once they were held."""

    def __init__(self, names, headroom: int = HEADROOM, period_s: float = PERIOD_S):
        self._reserve = {name: [SINGLETONS[name]] * headroom for name in names}
        self._floor = {name: sys.getrefcount(SINGLETONS[name]) for name in self._reserve}
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="studio-references", daemon=True)

    def top_up(self) -> int:
        """Give back what calls took since the last top-up; the number of references added."""
        added = 0
        for name, reserve in self._reserve.items():
            value = SINGLETONS[name]
            deficit = self._floor[name] - sys.getrefcount(value)
            if deficit > 0:
                reserve.extend(itertools.repeat(value, deficit))
                added += deficit
        return added

    def start(self) -> ReferenceKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self.top_up()


_keeper: ReferenceKeeper | None = None


def keep_alive() -> ReferenceKeeper | None:
    """Start keeping the objects this PySide6 drops alive, once per process (before the engine's
    thread starts). None where nothing is dropped."""
    global _keeper
    if _keeper is None:
        dropped = dropped_references()
        if dropped:
            import PySide6

            log.info(
                "PySide6 %s drops a reference to %s on every call (Python %d.%d): "
                "keeping them alive",
                PySide6.__version__,
                ", ".join(dropped),
                *sys.version_info[:2],
            )
            _keeper = ReferenceKeeper(dropped).start()
    return _keeper
