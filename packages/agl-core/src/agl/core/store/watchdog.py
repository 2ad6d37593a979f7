"""A daemon thread that ticks a store, so deadlines are enforced even when nobody calls it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

REPEAT_LOG_SECONDS = 60.0
"""The same tick failure is logged at most this often."""


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
        last_logged: tuple[str, float] | None = None  # the failure logged last, and when
        while True:
            self._woken.wait(self._period)
            self._woken.clear()
            if self._stopping:
                return
            try:
                self._tick()
            except Exception as error:
                # A failed tick (a locked database, a full disk) must not kill the thread; the next
                # tick tries again. A failure repeated at every tick (ten a second) would flood the
                # log, so the same one is logged again only after REPEAT_LOG_SECONDS.
                reason, now = repr(error), time.monotonic()
                if last_logged is None or last_logged[0] != reason or now - last_logged[1] >= REPEAT_LOG_SECONDS:
                    logger.exception("store watchdog tick failed (repeats are logged once a minute)")
                    last_logged = (reason, now)
