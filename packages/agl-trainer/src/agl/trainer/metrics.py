"""The trainer's built-in metrics observer: a plugin of its own hooks, so it sees exactly what any
third-party observer sees.

With ``Trainer(output_dir=...)`` each ``log_step`` becomes one line of ``metrics.jsonl``
(``{"step", "time", **metrics}``), appended as it happens so a running fit can be followed; a
metric that is NaN or infinite is written as ``null``, so every line stays JSON. At the end of the
fit the reward metrics are drawn to ``reward.png`` (when matplotlib is installed).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from agl.trainer.hookspecs import hookimpl

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CHART_FILE = "reward.png"
REWARD_SUFFIX = "reward_mean"
CHART_PREFIXES = ("train/", "val/")


class MetricsWriter:
    """Writes ``metrics.jsonl`` and ``reward.png`` into ``output_dir`` (created at fit start)."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.records: list[dict[str, Any]] = []

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / METRICS_FILE

    @property
    def chart_path(self) -> Path:
        return self.output_dir / CHART_FILE

    @hookimpl
    def agl_fit_start(self) -> None:
        # One fit per file: a rerun into the same directory replaces, rather than mixes with, the last.
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path.write_text("")
        self.records = []

    @hookimpl
    def agl_step_end(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, "time": time.time(), **finite_or_null(metrics)}
        self.records.append(record)
        with self.metrics_path.open("a") as file:
            file.write(json.dumps(record, allow_nan=False) + "\n")

    @hookimpl
    def agl_fit_end(self) -> None:
        # Also after a failed fit: the steps it got through are worth seeing.
        write_reward_chart(self.records, self.chart_path)


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN and infinity (in lists and dicts too) replaced by None: JSON has no
    number for them, and Python's ``json.dumps`` would write the bare ``NaN`` no JSON parser reads."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    return value


def reward_series(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Metric name -> [(step, value)] for each ``train/…reward_mean`` and ``val/…reward_mean`` metric
    (a step where it was null, not a number, has no point)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key.startswith(CHART_PREFIXES) and key.endswith(REWARD_SUFFIX) and value is not None:
                series.setdefault(key, []).append((record["step"], value))
    return series


def write_reward_chart(records: list[dict[str, Any]], path: Path) -> bool:
    """Draw reward per step (train solid, val dashed) to a PNG; returns whether it was written.

    matplotlib is an optional dependency (extra ``charts``), imported only here so that importing
    the trainer stays light; the figure is drawn by the Agg canvas directly, leaving pyplot's
    global backend (a notebook's, say) alone.
    """
    series = reward_series(records)
    if not series:
        logger.info("no train/ or val/ %s metrics: no reward chart", REWARD_SUFFIX)
        return False
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        logger.info("matplotlib is not installed (pip install 'agl-trainer[charts]'): no reward chart")
        return False
    figure = Figure(figsize=(8, 4.5))
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, points in sorted(series.items()):
        steps, values = zip(*points, strict=True)
        axes.plot(steps, values, "-o" if name.startswith("train/") else "--s", label=name)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("step")
    axes.set_ylabel("reward")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    canvas.print_png(str(path))
    return True
