"""The side-by-side benchmarks against the peers, in one run, as one markdown report.

    python3 dev.py bench [--only store,http,trainer,instrumentation] [--runs 5] [--quick]

Runs the existing scripts, each in the environment it needs, and gathers their figures:

- ``store``: agl's stores called in process against Agent Lightning 0.3.0's in-memory store
  (``compare_stores.py --in-process``);
- ``http``: agl's store server against the anchor's, one sequential client (``compare_stores.py --http``);
- ``trainer``: rollouts/s through agl's ``Trainer.fit`` against the anchor's ``Trainer.dev``, no-LLM
  agent (``trainer_bench.py --json``);
- ``instrumentation``: agl's instrumentors against OpenInference's on the same fake-model agents
  (``overhead_*.py``; CrewAI's in ``.venvs/crewai``), and agl's openai instrumentation per call
  (``instrumentation_bench.py``).

The report (machine, versions, command, load average, then one section per benchmark with
min / median / max over ``--runs`` runs) goes to stdout and to ``benchmarks/results/peers-<UTC>.md``.
``--quick`` shrinks every workload for a smoke check; its figures mean nothing. Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from compare_stores import ensure_anchor_venv  # noqa: E402

MAIN = ROOT / ".venv" / "bin" / "python"
CREWAI = ROOT / ".venvs" / "crewai" / "bin" / "python"
ANCHOR = ROOT / ".venvs" / "anchor" / "bin" / "python"
SUITES = ("store", "http", "trainer", "instrumentation")
# The distributions named in the versions table: agl's, the peers', the frameworks and what they share.
VERSIONED = re.compile(
    r"^(agl(-.*)?|agentlightning|openinference-.*|opentelemetry-(api|sdk)|openai|openai-agents|langchain-core|"
    r"langgraph|autogen-agentchat|crewai)$"
)
# framework, script, python, the clock read from its output ("" = its only one)
FRAMEWORKS = (
    ("LangChain / LangGraph", "overhead_langchain.py", MAIN, ""),
    ("AutoGen AgentChat (CPU seconds)", "overhead_autogen.py", MAIN, "cpu"),
    ("OpenAI Agents SDK", "overhead_openai_agents.py", MAIN, ""),
    ("CrewAI", "overhead_crewai.py", CREWAI, ""),
)
# "agl: 0.354 / 0.371 / 0.442 seconds ..." or, with two clocks, "agl (cpu): ..."
SPREAD = re.compile(r"^(\w+)(?: \((\w+)\))?: ([\d.]+) / ([\d.]+) / ([\d.]+) seconds", re.M)
CALLS = re.compile(r"^(\w+)\s+calls/s min / median / max: ([\d,]+) / ([\d,]+) / ([\d,]+)", re.M)


def capture(command: list[str | Path], cwd: Path = ROOT) -> str:
    """Run ``command`` and return its stdout; its stderr passes through, a failure raises."""
    print("$ " + shlex.join(str(c) for c in command), file=sys.stderr, flush=True)
    return subprocess.run([str(c) for c in command], check=True, stdout=subprocess.PIPE, text=True, cwd=cwd).stdout


def spread(values: tuple[float, float, float], digits: int = 0) -> str:
    return " / ".join(f"{v:,.{digits}f}" for v in values)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def store(args: argparse.Namespace, flag: str) -> str:
    """compare_stores.py already prints the markdown tables (ratio = agl median / anchor median)."""
    n = "200" if args.quick else "2000"
    return capture([MAIN, HERE / "compare_stores.py", flag, "--runs", str(args.runs), "--n", n]).strip()


def trainer(args: argparse.Namespace) -> str:
    rollouts = "8" if args.quick else "40"
    runners = "1" if args.quick else "1,4,8"
    command = [MAIN, HERE / "trainer_bench.py", "--json", "--runs", str(args.runs), "--rollouts", rollouts]
    report = json.loads(capture([*command, "--runners", runners]).strip().splitlines()[-1])

    def cell(side: str, k: str) -> tuple[float, float, float]:
        f = report[side][k]
        return f["min_rollouts_per_s"], f["rollouts_per_s"], f["max_rollouts_per_s"]

    rows = []
    for k in report["anchor"]:
        base = report["anchor"][k]["rollouts_per_s"]
        row = [k, spread(cell("anchor", k), 1)]
        for side in ("agl sqlite", "agl memory"):
            row += [spread(cell(side, k)), f"{report[side][k]['rollouts_per_s'] / base:,.0f}x"]
        rows.append(row)
    header = ["runners", "anchor Trainer.dev", "agl, SQLite file", "ratio", "agl, memory", "ratio"]
    return (
        f"Rollouts/s, min / median / max over {args.runs} fits of {rollouts} tasks each (baseline algorithm, "
        "an agent that returns a reward at once, both sides with their default settings, import excluded). "
        "Ratio = agl median / anchor median.\n\n" + table(header, rows)
    )


def instrumentation(args: argparse.Namespace) -> str:
    runs = "10" if args.quick else "100"
    rows = []
    for framework, script, python, clock in FRAMEWORKS:
        out = capture([python, HERE / script, "--runs", runs, "--repetitions", str(args.runs)])
        found = {m[1]: tuple(map(float, m.groups()[2:])) for m in SPREAD.finditer(out) if (m[2] or "") == clock}
        if set(found) != {"uninstrumented", "agl", "openinference"}:
            raise RuntimeError(f"{script}: unexpected output:\n{out}")
        plain, ours, theirs = found["uninstrumented"], found["agl"], found["openinference"]
        ratios = [f"{ours[1] / plain[1]:.2f}", f"{ours[1] / theirs[1]:.2f}"]
        rows.append([framework, *(spread(v, 3) for v in (plain, ours, theirs)), *ratios])
    header = ["framework", "uninstrumented", "agl", "OpenInference", "agl ÷ uninstrumented", "agl ÷ OpenInference"]
    calls = "50" if args.quick else "300"
    out = capture([MAIN, HERE / "instrumentation_bench.py", "--runs", str(args.runs), "--calls", calls])
    found = {m[1]: tuple(float(g.replace(",", "")) for g in m.groups()[1:]) for m in CALLS.finditer(out)}
    plain, ours = found["uninstrumented"], found["instrumented"]
    return (
        f"Seconds per {runs} agent runs (two fake model calls and one tool call each), min / median / max over "
        f"{args.runs} interleaved repetitions; both instrumentors record into the same SDK provider. "
        "Ratios of medians: below 1, agl costs less.\n\n"
        + table(header, rows)
        + f"\n\nThe openai client, {calls} calls per run against agl's scripted server (own process), plain and "
        "then instrumented by agl with spans stored in SQLite (no OpenInference counterpart in this run):\n\n"
        + table(
            ["client", "calls/s, min / median / max"],
            [
                ["uninstrumented", spread(plain)],
                ["agl, spans stored", spread(ours)],
                ["time per call, agl ÷ uninstrumented (medians)", f"{plain[1] / ours[1]:.2f}"],
            ],
        )
    )


def versions(python: Path) -> tuple[str, dict[str, str]]:
    code = (
        "import importlib.metadata as m, json, platform\n"
        "found = {d.metadata['Name'].lower(): d.version for d in m.distributions()}\n"
        "print(json.dumps([platform.python_version(), found]))"
    )
    found, packages = json.loads(capture([python, "-c", code]))
    return found, {name: v for name, v in sorted(packages.items()) if VERSIONED.match(name)}


def machine() -> str:
    cpu = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    memory = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    cores = len(os.sched_getaffinity(0))
    gib = int(memory[1]) / 2**20 if memory else float("nan")
    return (
        f"{cpu[1] if cpu else platform.processor()}, {cores} cores available (nproc), {gib:.1f} GiB RAM, "
        f"{platform.system()} {platform.release()} {platform.machine()}"
    )


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SUITES), help=f"comma-separated, of: {', '.join(SUITES)}")
    parser.add_argument("--runs", type=int, default=5, help="runs (repetitions) per benchmark; 5 or more to report")
    parser.add_argument("--quick", action="store_true", help="tiny workloads: a smoke check, not figures")
    parser.add_argument("--output", type=Path, help="the report's file (default benchmarks/results/peers-<UTC>.md)")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(chosen) - set(SUITES):
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    started = datetime.now(UTC)
    output = args.output or HERE / "results" / f"peers-{started:%Y%m%dT%H%M%SZ}.md"
    if {"store", "http", "trainer"} & set(chosen):
        ensure_anchor_venv()
    suites: dict[str, tuple[str, Callable[[], str]]] = {
        "store": ("The store in process", lambda: store(args, "--in-process")),
        "http": ("The store server over HTTP", lambda: store(args, "--http")),
        "trainer": ("The trainer loop, no-LLM agent", lambda: trainer(args)),
        "instrumentation": ("Instrumentation overhead", lambda: instrumentation(args)),
    }
    sections = []
    for name in chosen:
        title, measure = suites[name]
        before, clock = load(), time.monotonic()
        try:
            body = measure()
        except (subprocess.CalledProcessError, RuntimeError, KeyError, ValueError) as error:
            body = f"**Failed**: {error}"
        sections.append(
            f"## {title}\n\n{body}\n\n({time.monotonic() - clock:.0f} s; load average {before} before, {load()} after.)"
        )
        print(sections[-1], file=sys.stderr, flush=True)  # kept in a log should a later benchmark hang

    pythons = {"agl (.venv)": MAIN, "CrewAI (.venvs/crewai)": CREWAI, "anchor (.venvs/anchor)": ANCHOR}
    rows = []
    for label, python in pythons.items():
        if python.exists():
            found, packages = versions(python)
            rows.append([label, found, ", ".join(f"{k} {v}" for k, v in packages.items())])
    command = os.environ.get("AGL_BENCH_COMMAND") or shlex.join(["python", "benchmarks/peers.py", *sys.argv[1:]])
    header = [
        f"# Benchmarks against the peers, {started:%Y-%m-%d %H:%M} UTC",
        f"Command: `{command}` (total {(datetime.now(UTC) - started).total_seconds() / 60:.1f} min)",
        f"Machine: {machine()}",
        table(["environment", "python", "packages"], rows),
    ]
    if args.quick:
        header.append("**--quick: tiny workloads, a smoke check; these figures mean nothing.**")
    report = "\n\n".join(header + sections) + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    print(report)
    print(f"report written to {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
