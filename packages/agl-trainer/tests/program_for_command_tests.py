"""An "unchanged program" for the command runner mode: it knows nothing of agl, only its
environment (AGL_TASK, OPENAI_BASE_URL) and the OpenTelemetry API, which
``opentelemetry-instrument`` wires to the store.

Task keys: ``x`` (prints 2x), ``exit`` (exits with that status), ``signals`` (writes
``<pid>-<attempt id>`` there and hangs until stopped), ``leave_behind`` (starts a process that
hangs, writes ``<its pid>-<attempt id>`` into that folder and exits without waiting for it),
``kill`` (kills itself with that signal, as the OOM killer would).
"""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from opentelemetry import trace

task = json.loads(os.environ["AGL_TASK"])
with trace.get_tracer("program").start_as_current_span("program.work") as span:
    span.set_attribute("program.base_url", os.environ.get("OPENAI_BASE_URL", ""))
    span.set_attribute("program.model", os.environ.get("OPENAI_MODEL", ""))
    if "signals" in task:
        name = f"{os.getpid()}-{os.environ['AGL_ATTEMPT_ID']}"
        (Path(task["signals"]) / f".{name}").write_text("")
        (Path(task["signals"]) / f".{name}").rename(Path(task["signals"]) / name)
        threading.Event().wait()
    if "leave_behind" in task:
        left = subprocess.Popen([sys.executable, "-I", "-c", "import threading; threading.Event().wait()"])
        name = f"{left.pid}-{os.environ['AGL_ATTEMPT_ID']}"
        (Path(task["leave_behind"]) / f".{name}").write_text("")
        (Path(task["leave_behind"]) / f".{name}").rename(Path(task["leave_behind"]) / name)
    if "kill" in task:
        os.kill(os.getpid(), signal.Signals(task["kill"]))
    if "exit" in task:
        sys.exit(task["exit"])
    print(2 * task["x"])
