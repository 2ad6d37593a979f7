"""`agl spans ROLLOUT_ID`: an attempt's spans as a tree, with rewards, LLM calls, errors and training steps picked out.

The tree follows ``parent_id`` within one attempt; a span whose parent is not among the
attempt's spans (its parent was never exported, or lives in another process) is a root. A tree
deeper than the terminal has room for hangs its deepest spans at the last level that fits, each
marked with its real depth: rich gives a label no room past the width, and would drop it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Annotated

import typer
from rich.text import Text
from rich.tree import Tree

from agl.core.adapters._calls import in_order, llm_calls
from agl.core.cli._common import (
    JsonOutput,
    StoreUrl,
    console,
    one_line,
    plural,
    print_json,
    printable,
    status_text,
    with_store,
)
from agl.core.errors import AttemptNotFound, RolloutNotFound
from agl.core.store import LightningStore
from agl.core.tracing.semconv import (
    LLM_CALL,
    PROCESS_EXIT_SPAN,
    PROCESS_OUTCOME,
    REWARD,
    REWARD_PREFIX,
    TRAINER_METRIC_PREFIX,
    TRAINER_STEP,
)
from agl.core.types import Attempt, Rollout, Span

GUIDE_WIDTH = 4
"""Columns the tree's guide lines take per level."""
MIN_LABEL_WIDTH = 32
"""Columns a span's label keeps however deep it is: its depth past the room, name and duration."""
MAX_LEVELS = 64
"""Levels shown at most, piped too: unbounded, a chain of n spans prints n² characters of guides."""


def rewards(span: Span) -> dict[str, float]:
    """The span's numeric rewards: the scalar ``agl.reward`` under ``""``, each ``agl.reward.<name>`` under its name."""
    found: dict[str, float] = {}
    for key, value in span.attributes.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if key == REWARD:
            found[""] = float(value)
        elif key.startswith(REWARD_PREFIX):
            found[key.removeprefix(REWARD_PREFIX)] = float(value)
    return found


def total_rewards(spans: Sequence[Span]) -> dict[str, float]:
    """Rewards summed per dimension over the spans."""
    totals: dict[str, float] = {}
    for span in spans:
        for name, value in rewards(span).items():
            totals[name] = totals.get(name, 0.0) + value
    return totals


def format_rewards(values: dict[str, float]) -> str:
    """``0.75``, ``correct=1, short=0.5`` or ``0.75 (correct=1)``."""
    scalar = f"{values['']:g}" if "" in values else ""
    dimensions = ", ".join(f"{name}={value:g}" for name, value in values.items() if name)
    return f"{scalar} ({dimensions})" if scalar and dimensions else scalar or dimensions


def llm_call(span: Span) -> str | None:
    """``LLM <model> (<in> in, <out> out tokens)`` for a model call, else ``None``."""
    attributes = span.attributes
    model = attributes.get("gen_ai.request.model") or attributes.get("gen_ai.response.model")
    if not model and attributes.get(LLM_CALL) is not True:
        return None
    text = f"LLM {model}" if model else "LLM call"
    usage = [attributes.get("gen_ai.usage.input_tokens"), attributes.get("gen_ai.usage.output_tokens")]
    if any(count is not None for count in usage):
        tokens_in, tokens_out = ("?" if count is None else count for count in usage)
        text += f" ({tokens_in} in, {tokens_out} out tokens)"
    return text


def spans(
    rollout_id: Annotated[str, typer.Argument(help="The rollout (ro-…).", show_default=False)],
    attempt: Annotated[str, typer.Option(help="latest, all, or an attempt id (at-…).")] = "latest",
    json_output: JsonOutput = False,
    store: StoreUrl = None,
) -> None:
    """Show a rollout's spans as a tree: durations, rewards, LLM calls, errors."""

    async def load(backend: LightningStore) -> tuple[Rollout, list[Attempt], list[Span]]:
        rollout = await backend.get_rollout_by_id(rollout_id)
        if rollout is None:
            raise RolloutNotFound(rollout_id)
        attempts = list(await backend.query_attempts(rollout_id))
        if attempt == "all":
            chosen = attempts
        elif attempt == "latest":
            chosen = attempts[-1:]
        else:
            chosen = [a for a in attempts if a.attempt_id == attempt]
            if not chosen:
                raise AttemptNotFound(attempt)
        if not chosen:
            return rollout, [], []
        only = None if attempt == "all" else chosen[0].attempt_id
        return rollout, chosen, list(await backend.query_spans(rollout_id, only))

    rollout, attempts, found = with_store(store, load)
    if json_output:
        print_json([span.model_dump(mode="json") for span in found])
        return
    out = console()
    levels = max(1, min((out.width - MIN_LABEL_WIDTH) // GUIDE_WIDTH, MAX_LEVELS))
    if not attempts:
        out.print(f"{printable(rollout_id)} has no attempts yet (status {rollout.status}).")
        return
    by_attempt: dict[str, list[Span]] = defaultdict(list)
    for span in found:
        by_attempt[span.attempt_id].append(span)
    if len(attempts) == 1:
        tree = Tree(_attempt_label(rollout_id, attempts[0]))
        _add_spans(tree, by_attempt[attempts[0].attempt_id], 1, levels)
    else:
        tree = Tree(Text.assemble(printable(rollout_id), " · ", status_text(rollout.status)))
        for each in attempts:
            label = _attempt_label(None, each)
            if reward := format_rewards(total_rewards(by_attempt[each.attempt_id])):
                label.append(f" · reward {reward}", style="green")  # each attempt's own: retries are not summed
            _add_spans(tree.add(label), by_attempt[each.attempt_id], 2, levels)
    out.print(tree)
    out.print(_summary(attempts, by_attempt))


def _attempt_label(rollout_id: str | None, attempt: Attempt) -> Text:
    parts: list[str | Text] = [f"{printable(rollout_id)} · "] if rollout_id else []
    parts += [f"attempt {attempt.sequence_id} ({printable(attempt.attempt_id)}) · ", status_text(attempt.status)]
    return Text.assemble(*parts)


def _add_spans(node: Tree, attempt_spans: list[Span], depth: int, levels: int) -> None:
    """Hang one attempt's spans under ``node`` (whose children are at ``depth``), siblings in
    ``sequence_id`` order, at most ``levels`` deep."""
    ordered = sorted(attempt_spans, key=lambda s: s.sequence_id)
    ids = {span.span_id for span in ordered}
    children: dict[str, list[Span]] = defaultdict(list)
    for span in ordered:
        if span.parent_id in ids:
            children[span.parent_id].append(span)
    roots = [span for span in ordered if span.parent_id not in ids]
    seen: set[str] = set()
    # Roots first; then anything left over, which only a cycle of parent ids can leave unreached.
    for span in [*roots, *ordered]:
        if span.span_id not in seen:
            _attach(node, span, depth, levels, children, seen)


def _attach(node: Tree, span: Span, depth: int, levels: int, children: dict[str, list[Span]], seen: set[str]) -> None:
    """Hang ``span`` and its descendants under ``node``, depth first with a stack of our own: a
    trace can be deeper than Python's recursion limit. Past ``levels``, a span hangs beside its
    parent, its label prefixed by its depth."""
    stack = [(node, span, depth)]
    while stack:
        parent, span, depth = stack.pop()
        if span.span_id in seen:
            continue
        seen.add(span.span_id)
        label = _span_label(span)
        if depth > levels:
            label = Text.assemble((f"depth {depth} · ", "dim"), label)
        branch = parent.add(label)
        under = branch if depth < levels else parent
        stack.extend((under, child, depth + 1) for child in reversed(children[span.span_id]))


def _span_label(span: Span) -> Text:
    if (step := _step_label(span)) is not None:
        return step
    label = Text(one_line(span.name), style="bold", no_wrap=True, overflow="ellipsis")
    if span.start_time is not None and span.end_time is not None:
        milliseconds = (span.end_time - span.start_time) * 1000
        decimals = 1 if milliseconds < 9.95 else 0  # 4.2 ms, 812 ms; 9.96 rounds to "10", not "10.0"
        label.append(f"  {milliseconds:,.{decimals}f} ms", style="dim")
    if reward := rewards(span):
        label.append(f"  reward {format_rewards(reward)}", style="green")
    if llm := llm_call(span):
        label.append(f"  {one_line(llm)}", style="magenta")
    if span.name == PROCESS_EXIT_SPAN and isinstance(outcome := span.attributes.get(PROCESS_OUTCOME), str):
        label.append(f"  {one_line(outcome)}", style="red" if outcome == "failed" else "green")
    if span.status.status_code == "ERROR":
        label.append(f"  ERROR {one_line(span.status.description or '')}".rstrip(), style="red")
    return label


def _step_label(span: Span) -> Text | None:
    """A training run's step span (the span is written after the step, so its own duration is 0)."""
    step = span.attributes.get(TRAINER_STEP)
    if span.name != TRAINER_STEP or not isinstance(step, int) or isinstance(step, bool):
        return None
    metrics = {
        key.removeprefix(TRAINER_METRIC_PREFIX): value
        for key, value in span.attributes.items()
        if key.startswith(TRAINER_METRIC_PREFIX) and isinstance(value, int | float) and not isinstance(value, bool)
    }
    return step_line(step, metrics)


def step_line(step: int, metrics: Mapping[str, float]) -> Text:
    """One line for a training step: its number, its time (the ``seconds`` metric) and the metrics
    read first: every reward mean and validation metric, then the loss, which a narrow terminal
    cuts first. Shared by this tree and the trainer's progress display."""
    line = Text(f"step {step}", style="bold", no_wrap=True, overflow="ellipsis")
    if (seconds := metrics.get("seconds")) is not None:
        line.append(f"  {seconds:.1f} s", style="dim")
    headline = [name for name in metrics if name.endswith("reward_mean") or name.startswith("val/")]
    for name in [*headline, *(["loss"] if "loss" in metrics else [])]:
        line.append(f"  {name} {metrics[name]:.3g}", style="cyan")
    return line


def _summary(attempts: list[Attempt], by_attempt: dict[str, list[Span]]) -> str:
    """Counts for the whole tree, and the reward of the last attempt shown (with ``--attempt all``
    the latest, as `agl rollouts show` gives it): a reward is one attempt's, never a sum over
    retries. A call recorded twice (by the agent's instrumentation and by the LLM proxy, one
    response id) counts once, as the adapters count it; a request that failed counts too (the
    adapters skip it for training), as the tree shows it among the errors."""
    found = [span for attempt_spans in by_attempt.values() for span in attempt_spans]
    calls = sum(len(llm_calls(in_order(attempt_spans), None)) for attempt_spans in by_attempt.values())
    reward = format_rewards(total_rewards(by_attempt[attempts[-1].attempt_id])) or "-"
    where = " in the latest attempt" if len(attempts) > 1 else ""
    return f"{plural(len(found), 'span')} · {plural(calls, 'LLM call')} · reward {reward}{where}"
