"""agl's stores against the anchor's (Agent Lightning 0.3.0 in-memory), same workload, same run.

    python3 benchmarks/compare_stores.py [--runs 5] [--n 2000] [--agl-python .venv/bin/python]
        [--in-process] [--http]

Two comparisons, both by default: ``--in-process`` puts agl's stores called in process next to the
anchor's ``InMemoryLightningStore``; ``--http`` puts agl's store server (``http+memory``,
``http+sqlite``) next to the anchor's store server, each in a process of its own and driven by
its project's own client.

Stdlib only, so any python can drive it. The anchor lives in its own venv (``.venvs/anchor``, made
here on first use with ``pip install agentlightning==0.3.0``) because it cannot share one with agl.
Runs `anchor_store_bench.py` there and `store_bench.py` in agl's venv, taking turns one run each
(``--runs`` turns), then prints markdown tables for the docs, a pair per comparison. A ratio is
agl's median ops/s over the anchor's: above 1, agl is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
ANCHOR_VENV = ROOT / ".venvs" / "anchor"
ANCHOR_REQUIREMENT = ("agentlightning", "0.3.0")


class Comparison(NamedTuple):
    """One anchor backend against the agl backends that play the same part."""

    title: str
    anchor_backend: str
    anchor_label: str
    agl_backends: tuple[str, ...]


# Flag -> comparison; agl backends in table order.
COMPARISONS = {
    "in_process": Comparison("In process", "anchor-memory", "anchor in-memory", ("memory", "sqlite", "sqlite-full")),
    "http": Comparison(
        "Over HTTP (store server in its own process, one sequential client)",
        "anchor-http",
        "anchor server",
        ("http+memory", "http+sqlite"),
    ),
}
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


def load_average() -> str:
    """What ``uptime`` reports as the load average; a loaded machine makes every figure lower."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def ops(value: float | None) -> str:
    return "missing" if value is None else f"{value:,.0f}"


def ratio(agl: float | None, anchor: float | None) -> str:
    return "n/a" if agl is None or not anchor else f"{agl / anchor:.2f}x"


def medians_table(report: Report, comparison: Comparison) -> list[str]:
    """operation | anchor median | then per agl backend: median | ratio to the anchor."""
    header = ["operation", f"{comparison.anchor_label} ops/s (median)"]
    for backend in comparison.agl_backends:
        header += [f"agl {backend}", "ratio"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for op in OPERATIONS:
        anchor = report[comparison.anchor_backend][op]["median"]
        cells = [op, ops(anchor)]
        for backend in comparison.agl_backends:
            agl = report[backend][op]["median"]
            cells += [ops(agl), ratio(agl, anchor)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def spread_table(report: Report, comparison: Comparison) -> list[str]:
    """min / median / max ops/s of every backend, anchor first."""
    backends = (comparison.anchor_backend, *comparison.agl_backends)
    header = ["operation", comparison.anchor_label + " min / median / max"]
    header += [f"agl {b} min / median / max" for b in comparison.agl_backends]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for op in OPERATIONS:
        cells = [op]
        for b in backends:
            f = report[b][op]
            cells.append(" / ".join(ops(f[k]) for k in ("min", "median", "max")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summarise(runs: list[Report]) -> Report:
    """min / median / max over runs of one run each (whose three figures are that run's)."""
    report: Report = {}
    for backend in runs[0]:
        report[backend] = {}
        for op in OPERATIONS:
            values = [r[backend][op]["median"] for r in runs if r[backend][op]["median"] is not None]
            figures = {"min": min(values), "median": statistics.median(values), "max": max(values)} if values else {}
            report[backend][op] = {key: figures.get(key) for key in ("min", "median", "max")}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--agl-python", type=Path, default=ROOT / ".venv" / "bin" / "python")
    parser.add_argument("--in-process", action="store_true", help="compare stores called in process")
    parser.add_argument("--http", action="store_true", help="compare store servers over HTTP")
    args = parser.parse_args()
    chosen = [c for flag, c in COMPARISONS.items() if getattr(args, flag)] or list(COMPARISONS.values())
    agl_python = args.agl_python if args.agl_python.is_absolute() else ROOT / args.agl_python
    anchor_python = ensure_anchor_venv()
    load_before = load_average()
    here = Path(__file__).resolve().parent
    one_run = ["--json", "--runs", "1", "--n", str(args.n)]
    anchor = [anchor_python, here / "anchor_store_bench.py", *one_run, "--backends"]
    agl = [agl_python, here / "store_bench.py", *one_run, "--backends"]
    anchor.append(",".join(c.anchor_backend for c in chosen))
    agl.append(",".join(b for c in chosen for b in c.agl_backends))
    # The two sides take turns, one run each: the machine's speed drifts over minutes (other tenants,
    # CPU power states), and runs taken side by side share whatever state it is in.
    runs: list[Report] = []
    for _ in range(args.runs):
        runs.append(json.loads(run(anchor)) | json.loads(run(agl)))
    report = summarise(runs)

    print(f"Store throughput, ops/s: {args.runs} runs of {args.n} operations each, one sequential caller.")
    print("Ratio = agl median / anchor median (above 1: agl is faster).")
    for comparison in chosen:
        print(f"\n### {comparison.title}\n")
        print("\n".join(medians_table(report, comparison)))
        print("\nmin / median / max ops/s over the runs:\n")
        print("\n".join(spread_table(report, comparison)))
    print(
        f"\nMachine: {cpu_count()} CPUs (nproc), {platform.machine()}, {platform.system()} {platform.release()}; "
        f"python {python_version(anchor_python)} (anchor venv), {python_version(agl_python)} (agl venv)"
    )
    print(
        f"Versions: agentlightning {package_version(anchor_python, 'agentlightning')}, "
        f"agl-core {package_version(agl_python, 'agl-core')}"
    )
    print(f"Load average (1, 5, 15 min): {load_before} before, {load_average()} after (other jobs slow both sides)")


if __name__ == "__main__":
    main()
