"""A writer thread behind a bounded queue: file writes happen off the training loop.

Jobs run in submission order, so files appear in the order they were asked for (the steps on
disk are always a prefix of what was scheduled). A full queue blocks the caller (back
pressure, never unbounded memory). A job's exception is kept and raised in the training
thread at its next call (``submit``, ``flush`` or ``close``), never swallowed.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

__all__ = ["BackgroundWriter", "RecorderWriteError"]


class RecorderWriteError(RuntimeError):
    """Writing a snapshot or metrics line failed in the background writer thread."""


_STOP = object()


class BackgroundWriter:
    """Runs ``fn(*args)`` jobs on one daemon thread, in order, with at most ``max_pending`` waiting."""

    def __init__(self, max_pending: int = 16) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be ≥ 1, got {max_pending}")
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="tlora-recorder-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                if self._error is None:  # after a failure, later jobs are dropped: files stay a prefix
                    fn, args = job
                    fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread
                self._error = exc
            finally:
                self._queue.task_done()

    def check(self) -> None:
        """Raise the writer thread's error, if it had one."""
        if self._error is not None:
            raise RecorderWriteError(f"the recorder's background writer failed: {self._error!r}") from self._error

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self.check()
        if not self._thread.is_alive():
            raise RecorderWriteError("the recorder's writer thread has stopped; the recorder was closed")
        self._queue.put((fn, args))

    def flush(self) -> None:
        """Wait until every submitted job has run; raise if one failed."""
        self._queue.join()
        self.check()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self.check()
