"""A daemon thread that ticks a store, so deadlines are enforced even when nobody calls it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, tick: Callable[[], None], period: float, name: str) -> None:
        self._tick = tick
        self._period = period
        self._woken = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._woken.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def wake(self) -> None:
        """Tick now instead of at the end of the period (a tick already running is followed by one more)."""
        self._woken.set()

    def _run(self) -> None:
        while True:
            self._woken.wait(self._period)
            self._woken.clear()
            if self._stopping:
                return
            try:
                self._tick()
            except Exception:
                # A failed tick (a locked database, a full disk) must not kill the thread;
                # the next tick tries again.
                logger.exception("store watchdog tick failed")
