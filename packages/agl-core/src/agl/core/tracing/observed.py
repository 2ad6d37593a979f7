"""The observed rollout of a program that no runner launched: one per process, created in the
store by the process's first exported span."""

from __future__ import annotations

import _sitebuiltins
import functools
import os
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn

from agl.core.ids import new_id
from agl.core.tracing.context import ActiveRollout


class ProcessRollout:
    def __init__(self) -> None:
        suffix = new_id("p").removeprefix("p-")
        self.active = ActiveRollout(f"ro-proc-{suffix}", f"at-proc-{suffix}")
        self.metadata: dict[str, Any] = {"process": {"pid": os.getpid(), "argv": sys.argv[:20]}}
        self.crashed = False
        self._exit: tuple[object, FrameType, int] | None = None  # status, the main module's frame, its position then
        previous_hook = sys.excepthook

        def note_crash(*exc_info: Any) -> None:
            self.crashed = True
            previous_hook(*exc_info)

        sys.excepthook = note_crash
        _watch_exit_calls(self._note_exit)

    def _note_exit(self, status: object) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # a thread's SystemExit ends only that thread
        main = _main_frame()
        self._exit = (status, main, main.f_lasti)

    def exited_failing(self) -> bool:
        """Whether the program is ending through a ``sys.exit()`` (or ``exit()``/``quit()``) with a
        failing status, asked at exit, when CPython has already handled the `SystemExit` and its
        status is nowhere to be read.

        What it sees: the last such call in the main thread (argparse's and click's exits go
        through ``sys.exit``); it counts only if the ``__main__`` module's frame has not moved
        since, i.e. the `SystemExit` went all the way up. One the program caught and went on from
        moved that frame on, so it is ignored. What it cannot see: ``raise SystemExit(n)`` written
        out (no call to watch), an ``exit`` bound before agl was set up (``from sys import exit``
        in a program that calls `setup_tracing` itself), a caught exit after which the program
        raised ``SystemExit`` itself without returning to its main module's code, and an exit
        the main module catches and raises again (``except SystemExit: log(); raise``: the frame
        moved into the handler, so the exit reads as caught).
        """
        if self._exit is None:
            return False
        status, main, position = self._exit
        return main.f_lasti == position and exit_status_fails(status)


def exit_status_fails(status: object) -> bool:
    """Whether ``sys.exit(status)`` ends the process with a non-zero status, as CPython decides:
    None is 0, an int (True too) is itself, anything else (a message) is printed and is 1."""
    if status is None:
        return False
    if isinstance(status, int):
        return status != 0
    return True


def _watch_exit_calls(note: Callable[[object], None]) -> None:
    """Call ``note(status)`` on each ``sys.exit(status)``, ``exit(status)`` and ``quit(status)``
    before the `SystemExit` is raised; nothing else about them changes."""
    real_exit = sys.exit
    real_quit = _sitebuiltins.Quitter.__call__

    @functools.wraps(real_exit)
    def exit(status: Any = None) -> NoReturn:
        note(status)
        real_exit(status)

    @functools.wraps(real_quit)
    def quit(self: Any, code: Any = None) -> NoReturn:
        note(code)
        real_quit(self, code)

    sys.exit = exit
    _sitebuiltins.Quitter.__call__ = quit  # type: ignore[method-assign]


def _main_frame() -> FrameType:
    """The frame of the ``__main__`` module's own code, else the outermost one. Not simply the
    outermost: under ``python -m`` that is runpy's, which never moves while the program runs, so
    an exit the program caught would still count (``python -m pytest`` catches many)."""
    main = sys.modules.get("__main__")
    main_globals = getattr(main, "__dict__", None)
    frame = sys._getframe()
    while True:
        if frame.f_globals is main_globals and frame.f_code.co_name == "<module>":
            return frame
        if frame.f_back is None:
            return frame
        frame = frame.f_back


_process: ProcessRollout | None = None


def process_rollout() -> ProcessRollout:
    global _process
    if _process is None:
        _process = ProcessRollout()
    return _process
