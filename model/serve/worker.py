"""One model, one worker: jobs run one at a time, in the order they came, from a bounded queue.

The web side submits a ``Job`` and awaits its future; the worker thread runs it. A job can be
cancelled while it waits (it is then skipped) or while it runs (its ``cancel`` event reaches the
sampler, which stops at the next cell). A full queue refuses at once with an estimate of when to
retry, and ``stop`` cancels whatever is left. Torch-free: what a job does is its ``run``.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("dalle.serve")


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in about {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The server is stopping: the job was not (or will not be) run."""


class JobCancelled(Exception):
    """The job's ``cancel`` event was set (client gone, timeout, shutdown) before it finished."""


@dataclass
class Job:
    """One request's work. ``run(cancel)`` is called on the worker thread; it returns the result
    or raises (``JobCancelled`` once it sees ``cancel`` set)."""

    run: Callable[[threading.Event], Any]
    kind: str  # "generate" or "edit", for the log
    detail: str = ""  # e.g. "n=2 size=256x256", for the log
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)
    reason: str = ""  # why it was cancelled, for the log

    def cancel_because(self, reason: str) -> None:
        if not self.cancel.is_set():
            self.reason = reason
            self.cancel.set()


@dataclass
class Stats:
    queued: int = 0
    running: int = 0
    done: int = 0
    cancelled: int = 0
    failed: int = 0
    rejected: int = 0  # refused with 429


class Slot:
    """A request's place in the server, held from before its body is read until its answer is
    sent (admission first: a request that would not fit is refused before its body is read, and
    no more requests than the queue holds are ever read, queued, run or answered at once)."""

    def __init__(self, worker: Worker):
        self._worker = worker
        self.held = True

    def release(self) -> None:
        """Give the place back; idempotent."""
        if self.held:
            self.held = False
            self._worker._unreserve()


class Worker:
    """The worker thread and its bounded queue (``capacity`` jobs waiting, besides the one
    running; ``capacity + 1`` requests holding a ``Slot``)."""

    def __init__(self, capacity: int = 8):
        if capacity < 1:
            raise ValueError(f"the queue must hold at least 1 job, got {capacity}")
        self.capacity = capacity
        self._waiting: collections.deque[Job] = collections.deque()
        self._lock = threading.Condition()
        self._running: Job | None = None
        self._reserved = 0  # Slots held: requests being read, queued, run or answered
        self._stopping = False
        self._seconds_per_job = 1.0  # a running mean, for Retry-After
        self.stats = Stats()
        self._thread = threading.Thread(target=self._loop, name="dalle-serve-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- the web side ---------------------------------------------------------------------------

    def reserve(self) -> Slot:
        """A place for a request about to be read (held until its answer is sent); raises
        ``QueueFull`` or ``ShuttingDown`` at once, before anything of its body is read."""
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if self._reserved >= self.capacity + 1:
                self._refuse()
            self._reserved += 1
        return Slot(self)

    def _unreserve(self) -> None:
        with self._lock:
            self._reserved -= 1

    def _refuse(self) -> None:
        self.stats.rejected += 1
        ahead = max(len(self._waiting) + (self._running is not None), self._reserved)
        raise QueueFull(max(1, math.ceil(ahead * self._seconds_per_job)))

    def submit(self, job: Job, slot: Slot | None = None) -> Job:
        """Queue ``job``, in its request's ``slot`` (from ``reserve``) or in a free place;
        raises ``QueueFull`` (with a Retry-After estimate) or ``ShuttingDown``."""
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if (slot is None or not slot.held) and len(self._waiting) >= self.capacity:
                self._refuse()
            self._waiting.append(job)
            self.stats.queued = len(self._waiting)
            depth = len(self._waiting)
            self._lock.notify()
        log.info(
            "job %s queued: %s %s (queue %d/%d)",
            job.id,
            job.kind,
            job.detail,
            depth,
            self.capacity,
            extra={"job": job.id, "event": "queued", "kind": job.kind, "queue": depth},
        )
        return job

    def withdraw(self, job: Job) -> bool:
        """Take a cancelled ``job`` out of the queue at once (its slot is free for the next
        request); False when it is not waiting (running, or already done)."""
        with self._lock:
            try:
                self._waiting.remove(job)
            except ValueError:
                return False
            self.stats.queued = len(self._waiting)
        if job.future.set_running_or_notify_cancel():
            job.future.set_exception(JobCancelled(job.reason))
        self._count("cancelled", job, job.reason or "cancelled while queued")
        return True

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "queued": len(self._waiting),
                "admitted": self._reserved,
                "queue_capacity": self.capacity,
                "running": self._running is not None,
                "done": self.stats.done,
                "cancelled": self.stats.cancelled,
                "failed": self.stats.failed,
                "rejected": self.stats.rejected,
                "seconds_per_job": round(self._seconds_per_job, 3),
            }

    def stop(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, cancel the waiting ones and the running one, wait for the thread."""
        with self._lock:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            running = self._running
            self._lock.notify_all()
        for job in waiting:
            job.cancel_because("server shutting down")
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ShuttingDown("the server shut down before this job ran"))
            self._count("cancelled", job, "shutdown while queued")
        if running is not None:
            running.cancel_because("server shutting down")
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the worker thread ----------------------------------------------------------------------

    def _next(self) -> Job | None:
        with self._lock:
            while not self._waiting and not self._stopping:
                self._lock.wait()
            if self._stopping:
                return None
            job = self._waiting.popleft()
            self.stats.queued = len(self._waiting)
            self._running = job
            return job

    def _loop(self) -> None:
        while (job := self._next()) is not None:
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running = None

    def _run(self, job: Job) -> None:
        if job.cancel.is_set() or not job.future.set_running_or_notify_cancel():
            self._count("cancelled", job, job.reason or "cancelled while queued")
            if not job.future.done():
                job.future.set_exception(JobCancelled(job.reason))
            return
        waited = time.monotonic() - job.queued_at
        log.info(
            "job %s started after %.2f s in the queue",
            job.id,
            waited,
            extra={"job": job.id, "event": "started", "waited_s": round(waited, 3)},
        )
        started = time.monotonic()
        try:
            result = job.run(job.cancel)
        except JobCancelled:
            self._count("cancelled", job, job.reason or "cancelled")
            job.future.set_exception(JobCancelled(job.reason))
            return
        except BaseException as error:  # the job's own failure: its request gets a 500
            self._count("failed", job, f"{type(error).__name__}: {error}")
            job.future.set_exception(error)
            return
        seconds = time.monotonic() - started
        self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * seconds
        with self._lock:
            self.stats.done += 1
        speed = getattr(result, "tokens_per_s", None)
        log.info(
            "job %s done in %.2f s%s",
            job.id,
            seconds,
            f", {speed:.0f} tokens/s" if speed else "",
            extra={
                "job": job.id,
                "event": "done",
                "seconds": round(seconds, 3),
                "tokens_per_s": round(speed, 1) if speed else None,
            },
        )
        job.future.set_result(result)

    def _count(self, what: str, job: Job, why: str) -> None:
        with self._lock:
            setattr(self.stats, what, getattr(self.stats, what) + 1)
        level = logging.WARNING if what == "failed" else logging.INFO
        log.log(
            level,
            "job %s %s: %s",
            job.id,
            what,
            why,
            extra={"job": job.id, "event": what, "reason": why},
        )
