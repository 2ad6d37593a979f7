"""agl's stores against the anchor's (Agent Lightning 0.3.0 in-memory), same workload, same run.

    python3 benchmarks/compare_stores.py [--runs 5] [--n 2000] [--agl-python .venv/bin/python]

Stdlib only, so any python can drive it. The anchor lives in its own venv (``.venvs/anchor``, made
here on first use with ``pip install agentlightning==0.3.0``) because it cannot share one with agl.
Runs `anchor_store_bench.py` there and `store_bench.py` in agl's venv, one after the other, then
prints markdown tables for the docs. A ratio is agl's median ops/s over the anchor's: above 1, agl is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANCHOR_VENV = ROOT / ".venvs" / "anchor"
ANCHOR_REQUIREMENT = ("agentlightning", "0.3.0")
ANCHOR_BACKEND = "anchor-memory"
AGL_BACKENDS = ("memory", "sqlite", "sqlite-full")
OPERATIONS = ("enqueue", "enqueue_many", "dequeue", "update_attempt", "add_span", "add_many_spans", "query_spans")

Report = dict[str, dict[str, dict[str, float | None]]]


def run(cmd: list[str | Path]) -> str:
    """Run ``cmd``, echoing it to stderr, and return its stdout; stderr passes through."""
    print("$ " + " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.PIPE, text=True).stdout


def probe(python: Path, code: str) -> str:
    """What ``code`` prints when run by ``python`` (quietly: facts for the report, not steps)."""
    return subprocess.run([str(python), "-c", code], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()


def package_version(python: Path, package: str) -> str | None:
    """``package``'s installed version in ``python``'s environment, or None when it is absent."""
    code = f"import importlib.metadata as m\ntry: print(m.version({package!r}))\nexcept m.PackageNotFoundError: pass"
    return probe(python, code) or None


def ensure_anchor_venv() -> Path:
    """The anchor's python, creating its venv and installing the pinned release if needed."""
    python = ANCHOR_VENV / "bin" / "python"
    if not python.exists():
        run([sys.executable, "-m", "venv", ANCHOR_VENV])
    name, version = ANCHOR_REQUIREMENT
    if package_version(python, name) != version:
        run([python, "-m", "pip", "install", "--quiet", f"{name}=={version}"])
    return python


def python_version(python: Path) -> str:
    return probe(python, "import platform; print(platform.python_version())")


def cpu_count() -> int:
    """What ``nproc`` prints: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def ops(value: float | None) -> str:
    return "missing" if value is None else f"{value:,.0f}"


def ratio(agl: float | None, anchor: float | None) -> str:
    return "n/a" if agl is None or not anchor else f"{agl / anchor:.2f}x"


def medians_table(report: Report) -> list[str]:
    """operation | anchor median | then per agl backend: median | ratio to the anchor."""
    header = ["operation", "anchor in-memory ops/s (median)"]
    for backend in AGL_BACKENDS:
        header += [f"agl {backend}", "ratio"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for op in OPERATIONS:
        anchor = report[ANCHOR_BACKEND][op]["median"]
        cells = [op, ops(anchor)]
        for backend in AGL_BACKENDS:
            agl = report[backend][op]["median"]
            cells += [ops(agl), ratio(agl, anchor)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def spread_table(report: Report) -> list[str]:
    """min / median / max ops/s of every backend, anchor first."""
    backends = (ANCHOR_BACKEND, *AGL_BACKENDS)
    header = ["operation", *(f"{b if b == ANCHOR_BACKEND else 'agl ' + b} min / median / max" for b in backends)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for op in OPERATIONS:
        cells = [op]
        for b in backends:
            f = report[b][op]
            cells.append(" / ".join(ops(f[k]) for k in ("min", "median", "max")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--agl-python", type=Path, default=ROOT / ".venv" / "bin" / "python")
    args = parser.parse_args()
    agl_python = args.agl_python if args.agl_python.is_absolute() else ROOT / args.agl_python
    anchor_python = ensure_anchor_venv()
    sizes = ["--runs", str(args.runs), "--n", str(args.n)]
    here = Path(__file__).resolve().parent
    report: Report = json.loads(run([anchor_python, here / "anchor_store_bench.py", "--json", *sizes]))
    backends = ["--backends", ",".join(AGL_BACKENDS)]
    report.update(json.loads(run([agl_python, here / "store_bench.py", "--json", *sizes, *backends])))

    print(f"Store throughput, ops/s: {args.runs} runs of {args.n} operations each, one sequential caller.")
    print("Ratio = agl median / anchor median (above 1: agl is faster).\n")
    print("\n".join(medians_table(report)))
    print("\nmin / median / max ops/s over the runs:\n")
    print("\n".join(spread_table(report)))
    print(
        f"\nMachine: {cpu_count()} CPUs (nproc), {platform.machine()}, {platform.system()} {platform.release()}; "
        f"python {python_version(anchor_python)} (anchor venv), {python_version(agl_python)} (agl venv)"
    )
    print(
        f"Versions: agentlightning {package_version(anchor_python, 'agentlightning')}, "
        f"agl-core {package_version(agl_python, 'agl-core')}"
    )


if __name__ == "__main__":
    main()
