"""What agl adds to a program's start-up under ``opentelemetry-instrument``.

    python benchmarks/startup_bench.py [--runs 20]

Times ``opentelemetry-instrument python -c pass`` in agl's environment (every agl package
installed: the distro, configurator, exporter and instrumentors load, the SDK is configured) and
in a side environment holding only the same OpenTelemetry packages (``.venvs/otel-only``,
created on first use). No framework is imported, so instrumentors must not import theirs.
Instrumentors of other projects installed beside agl's (the repository's environment holds
OpenInference's for the coexistence tests; theirs import their frameworks at once) are switched off
with ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``, so the figure is agl's own.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / ".venvs" / "otel-only"


def baseline_env() -> Path:
    python = BASELINE / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(BASELINE)
        versions = [
            f"{name}=={importlib.metadata.version(name)}"
            for name in ("opentelemetry-api", "opentelemetry-sdk", "opentelemetry-instrumentation")
        ]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *versions], check=True)
    return BASELINE / "bin"


def others() -> list[str]:
    """The instrumentors installed here that are not agl's."""
    found = importlib.metadata.entry_points(group="opentelemetry_instrumentor")
    return sorted(point.name for point in found if not point.value.startswith("agl."))


def timings(bin_dir: Path, runs: int) -> list[float]:
    command = [str(bin_dir / "opentelemetry-instrument"), str(bin_dir / "python"), "-c", "pass"]
    environment = {**os.environ, "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": ",".join(others())}
    subprocess.run(command, check=True, env=environment)  # warm the file cache
    results = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, env=environment)
        results.append(time.perf_counter() - started)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    agl = timings(Path(sys.executable).parent, args.runs)
    otel_only = timings(baseline_env(), args.runs)
    for name, figures in (("OpenTelemetry only", otel_only), ("with agl", agl)):
        print(f"{name:20} s: min {min(figures):.3f}  median {statistics.median(figures):.3f}  max {max(figures):.3f}")
    print(f"agl adds {statistics.median(agl) - statistics.median(otel_only):+.3f} s (median)")
    print(f"switched off (not agl's): {', '.join(others()) or 'none'}")


if __name__ == "__main__":
    main()
