#!/usr/bin/env python3
"""The project's set-up and entry points, standard library only, so a fresh machine needs nothing
but Python 3.11 and pip:

    python3 dev.py demo     agl's main job, end to end, on the embedded defaults
    python3 dev.py test     every check CI runs: lint, format, the whole test suite
    python3 dev.py bench    the benchmarks recorded in docs/benchmarks.md

Each command creates (or refreshes, when a pyproject.toml changed) the virtual environment it
needs under ./.venv and runs there.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".agl-installed"

PACKAGES = ["packages/agl-core[server,test]", "packages/agl-instrument-openai[instruments]"]
TOOLS = ["ruff==0.17.6"]


def run(*command: str | Path, **kwargs: object) -> None:
    print("+", " ".join(str(c) for c in command), flush=True)
    result = subprocess.run([str(c) for c in command], cwd=ROOT, **kwargs)  # type: ignore[call-overload]
    if result.returncode:
        sys.exit(result.returncode)


def requirements_fingerprint() -> str:
    digest = hashlib.sha256()
    for spec in (*PACKAGES, *TOOLS):
        digest.update(spec.encode())
    for pyproject in sorted(ROOT.glob("packages/*/pyproject.toml")):
        digest.update(pyproject.read_bytes())
    return digest.hexdigest()


def ensure_env() -> None:
    """Create .venv and install every package editable, once per change of requirements."""
    fingerprint = requirements_fingerprint()
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    if not PYTHON.exists():
        print(f"creating {VENV.relative_to(ROOT)}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    editable = [arg for spec in PACKAGES for arg in ("-e", spec)]
    run(PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *editable, *TOOLS)
    STAMP.write_text(fingerprint)


def demo() -> None:
    ensure_env()
    run(PYTHON, "examples/batch_rollouts.py")
    run(PYTHON, "examples/agent_to_triplets.py")


def test() -> None:
    ensure_env()
    run(PYTHON, "-m", "ruff", "check", ".")
    run(PYTHON, "-m", "ruff", "format", "--check", ".")
    run(PYTHON, "-m", "pytest", *sys.argv[2:])


def bench() -> None:
    ensure_env()
    run(PYTHON, "benchmarks/store_bench.py", *sys.argv[2:])


COMMANDS = {"demo": demo, "test": test, "bench": bench}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        sys.exit(2)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    COMMANDS[sys.argv[1]]()


if __name__ == "__main__":
    main()
