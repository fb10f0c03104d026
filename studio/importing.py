"""File › Import model…'s state and worker, without widgets: what the chosen folder holds of a
kind's files, what the import needs against what the machine has, where it writes, and the
conversion on a worker thread that reports each step and stops on Cancel.

``ImportPlan`` is the dialog's facts (``scan``, ``needs``, the output path); ``ImportJob`` runs
``model.importers.kinds.run`` on a thread of its own (an import takes minutes and must not hold
the engine's worker, which keeps serving the model in use). Its signals reach the dialog on the
Qt thread (queued: the job lives on the Qt thread, they are emitted from the worker). Cancel sets
an event the importer checks between steps and tensors (``model.importers.common.tick``): it
raises ``Cancelled`` there, before anything is written; the writer is atomic, so a refusal or a
failed write leaves nothing either. The output is a new name in the models folder, never a file
that exists (``kinds.free_name``), checked again just before the import starts.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from studio import catalog

log = logging.getLogger(__name__)

kinds = catalog.import_kinds
KINDS = kinds.KINDS


@dataclass(frozen=True)
class ImportPlan:
    """One choice of kind, folder and precision, and what follows from it (see the module)."""

    scan: kinds.Scan
    dtype: str
    out: Path  # in the models folder, a name no file has
    needs: kinds.Needs
    free_disk: int
    free_memory: int | None  # None: this machine does not say

    @classmethod
    def of(cls, key: str, folder: str | Path, dtype: str, models: Path) -> ImportPlan:
        kind = KINDS[key]
        dtype = dtype if dtype in kind.dtypes else (kind.dtypes[0] if kind.dtypes else "")
        scan = kinds.scan(kind, folder)
        name = kinds.output_name(scan, dtype)
        return cls(
            scan=scan,
            dtype=dtype,
            out=kinds.free_name(models, name, kind.suffix),
            needs=kinds.estimate(scan, dtype or "bf16"),
            free_disk=catalog.free_disk(models),
            free_memory=catalog.available_ram(),
        )

    @property
    def short_of(self) -> str:
        """Why this machine cannot hold the import, in one line; "" when it can (as far as the
        estimate says: the importer checks again before it reads a weight)."""
        size = kinds.size_text
        if self.free_memory is not None and self.needs.memory > self.free_memory:
            return (
                f"converting needs about {size(self.needs.memory)} of memory, "
                f"{size(self.free_memory)} available: close other programs"
                + (" or choose bf16" if self.dtype == "fp32" else "")
            )
        if self.needs.disk > self.free_disk:
            return (
                f"{self.out.parent} has {size(self.free_disk)} free; the file needs about "
                f"{size(self.needs.disk)}"
            )
        return ""

    @property
    def renamed(self) -> bool:
        """The usual name is taken in the models folder: this import writes another."""
        return self.out.name != kinds.output_name(self.scan, self.dtype)


class ImportJob(QObject):
    """One import on its own thread (see the module). Emit order: ``stepped`` for each line
    the importer says, then exactly one of ``finished``, ``failed`` or ``cancelled``."""

    stepped = Signal(int, int, str)  # steps done, steps in all, the importer's line
    finished = Signal(str)  # the written file
    failed = Signal(str)  # one line naming the file and the problem
    cancelled = Signal()

    def __init__(self, plan: ImportPlan, parent: QObject | None = None):
        super().__init__(parent)
        self.plan = plan
        self.steps = kinds.steps(plan.scan)
        self.done = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the importer's progress: a line a step, and a tick between ------------------------

    def __call__(self, message: str) -> None:
        self.tick()
        self.done += 1
        self.stepped.emit(min(self.done, self.steps), self.steps, message)

    def tick(self) -> None:
        if self._stop.is_set():
            raise catalog.ImportCancelled()

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="import", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Stop at the importer's next step or tensor; ``cancelled`` follows (or ``finished``,
        when the file was already being written)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the thread has ended (tests; the dialog never blocks on it)."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        plan = self.plan
        try:
            if plan.out.exists():  # made since the dialog chose the name
                raise ValueError(f"{plan.out} exists now: choose Import again for a new name")
            written = kinds.run(plan.scan, plan.out, plan.dtype or "bf16", self)
        except catalog.ImportCancelled:
            log.info("import of %s cancelled", plan.scan.kind.title)
            self.cancelled.emit()
        except MemoryError as error:
            self.failed.emit(catalog.one_line(error))
        except (ValueError, OSError) as error:  # the importers' refusals are one line
            self.failed.emit(catalog.one_line(error))
        except Exception as error:  # a reader's own error past the importer's checks
            log.exception("import of %s failed", plan.scan.kind.title)
            self.failed.emit(f"{plan.scan.folder}: not {plan.scan.kind.title}'s files: "
                             f"{catalog.one_line(error)}")  # fmt: skip
        else:
            self.finished.emit(str(written))
