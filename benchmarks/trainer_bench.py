"""Rollouts per second through the trainer on a no-LLM agent: agl against Agent Lightning 0.3.0.

    python benchmarks/trainer_bench.py [--rollouts 40] [--runners 1,4,8] [--runs 3] [--json]

Both trainers run their ``baseline`` algorithm over the same tasks with the same agent (a class
agent that returns a reward at once), with their default settings (the anchor's: its client-server
strategy, its store server on port 4747 and runner processes), import excluded.
agl uses its default SQLite store (a fresh file) and the memory store; the anchor its in-memory
store (it has no other). The anchor runs in ``.venvs/anchor`` (see `anchor_store_bench.py`): this
file re-runs itself there with ``--anchor``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ANCHOR_PYTHON = ROOT / ".venvs" / "anchor" / "bin" / "python"


def tasks(n: int) -> list[dict[str, int]]:
    return [{"x": i} for i in range(n)]


def agl_seconds(n: int, runners: int, store_url: str) -> float:
    from agl.core import open_store
    from agl.core.agent import LitAgent
    from agl.core.types import PromptTemplate
    from agl.trainer import Trainer

    class Agent(LitAgent):
        def rollout(self, task: Any, resources: Any, rollout: Any) -> float:
            return 1.0

    store = open_store(store_url)
    prompt = PromptTemplate(template="{x}")
    started = time.perf_counter()
    Trainer("baseline", store=store, n_runners=runners).fit(Agent(), tasks(n), resources={"prompt": prompt})
    return time.perf_counter() - started


def anchor_seconds(n: int, runners: int, polling_interval: float) -> float:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # offline
    import agentlightning as anchor
    from agentlightning.algorithm.fast import Baseline

    class Agent(anchor.LitAgent):
        def rollout(self, task: Any, resources: Any, rollout: Any) -> float:
            return 1.0

    # Its baseline splits the dataset into train and val (train_split); every task runs once.
    prompt = anchor.PromptTemplate(template="{x}", engine="f-string")  # without resources it skips every rollout
    trainer = anchor.Trainer(
        n_runners=runners, algorithm=Baseline(polling_interval=polling_interval), initial_resources={"prompt": prompt}
    )
    started = time.perf_counter()
    trainer.dev(Agent(), train_dataset=tasks(n))
    return time.perf_counter() - started


def fresh_sqlite(folder: str) -> str:
    return f"sqlite:///{folder}/{time.time_ns()}.db"


def measure(run: Any, n: int, runs: int) -> dict[str, float]:
    """Seconds per fit (median) and rollouts/s: median, and min / max over the runs."""
    seconds = [run() for _ in range(runs)]
    return {
        "median_s": statistics.median(seconds),
        "rollouts_per_s": n / statistics.median(seconds),
        "min_rollouts_per_s": n / max(seconds),
        "max_rollouts_per_s": n / min(seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=40)
    parser.add_argument("--runners", default="1,4,8")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--anchor-polling-interval", type=float, default=5.0, help="its baseline's; 5 s by default")
    parser.add_argument("--anchor", action="store_true", help="measure Agent Lightning (run in its venv)")
    parser.add_argument("--json", action="store_true", help="print one JSON object: side -> runners -> figures")
    args = parser.parse_args()
    counts = [int(c) for c in args.runners.split(",")]
    n, runs = args.rollouts, args.runs
    if args.anchor:
        figures = {k: measure(lambda k=k: anchor_seconds(n, k, args.anchor_polling_interval), n, runs) for k in counts}
        print(json.dumps(figures))
        return
    anchor_run = subprocess.run(
        [
            str(ANCHOR_PYTHON),
            str(Path(__file__).resolve()),
            "--anchor",
            f"--rollouts={n}",
            f"--runners={args.runners}",
            f"--runs={runs}",
            f"--anchor-polling-interval={args.anchor_polling_interval}",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),  # it writes agentops.log into its working directory
    )
    anchor = {int(k): v for k, v in json.loads(anchor_run.stdout.strip().splitlines()[-1]).items()}
    report: dict[str, dict[int, dict[str, float]]] = {"anchor": anchor, "agl sqlite": {}, "agl memory": {}}
    with tempfile.TemporaryDirectory() as folder:
        for k in counts:
            sqlite = report["agl sqlite"][k] = measure(lambda k=k: agl_seconds(n, k, fresh_sqlite(folder)), n, runs)
            memory = report["agl memory"][k] = measure(lambda k=k: agl_seconds(n, k, "memory://"), n, runs)
            if args.json:
                continue
            base = anchor[k]["rollouts_per_s"]
            print(
                f"{k} runner(s), {n} rollouts: anchor {base:8.1f}/s | agl sqlite {sqlite['rollouts_per_s']:8.1f}/s"
                f" ({sqlite['rollouts_per_s'] / base:5.1f}x) | agl memory {memory['rollouts_per_s']:8.1f}/s"
                f" ({memory['rollouts_per_s'] / base:5.1f}x)"
            )
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
