"""``apo``: automatic prompt optimisation, a beam search over prompt templates guided by an LLM.

Each round, every candidate in the beam runs a batch of training tasks; an optimizer LLM reads the
worst-scoring conversations, writes a critique of each template (the "textual gradient") and then
edits the template along it. Parents and children are scored on validation tasks and the best
``beam_width`` survive. The optimizer is any OpenAI-compatible chat endpoint, called with aiohttp
(already a dependency of agl-core), so the trainer needs no client library of its own.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agl.core.errors import AglError
from agl.core.types import LLM, NamedResources, PromptTemplate, Rollout, RolloutMode
from agl.trainer.algorithm import Algorithm, AlgorithmContext

OPTIMIZER_RESOURCE = "optimizer"
"""An `LLM` resource under this name supplies the optimizer options that are not given."""
MAX_EXAMPLE_CHARS = 4000
"""An example's conversation is cut to this many characters, so one long rollout cannot swamp the critique."""
EDITED = re.compile(r"<prompt>(.*?)</prompt>", re.DOTALL)
Placeholder = tuple[str, str | None, str]
"""A replacement field as written: name, conversion (``!r``), format spec (``:>8``, may nest fields)."""

CRITIC = (
    "You review prompt templates of an AI agent. Given a template and conversations in which the agent "
    "scored badly, explain concisely what in the template likely caused the low rewards and how to fix it."
)
EDITOR = (
    "You rewrite prompt templates of an AI agent. Keep every {placeholder} of the template exactly as "
    "written and do not add new ones; write literal braces doubled ({{ and }}). Answer with the whole new "
    "template between <prompt> and </prompt>."
)


class OptimizerError(AglError, RuntimeError):
    """The optimizer endpoint could not be reached, answered with an error or without a message
    (an `AglError`: a setting of the user's to fix, which `agl train` reports in one line)."""


@dataclass
class _Candidate:
    """One assignment of the optimised templates; ids and scores are filled in when first needed."""

    templates: dict[str, PromptTemplate]
    resources_id: str | None = None
    val_reward: float | None = None
    train_rewards: list[float] = field(default_factory=list)

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((name, template.template) for name, template in self.templates.items()))


class APO(Algorithm):
    """Beam search over the `PromptTemplate` resources named in ``prompts`` (default: all of them).

    Options: ``beam_width`` candidates survive each of ``rounds`` rounds; each expands into
    ``branch_factor`` children after running ``train_batch_size`` training tasks (taken in turn
    from the train dataset); ``critique_examples`` of its lowest-reward rollouts go to the critique.
    Candidates are scored by mean reward (a rollout without one counts ``missing_reward``, 0 unless
    set: with rewards that can be negative, set it to the lowest, or a prompt whose rollouts fail
    outscores working ones) over the first
    ``val_batch_size`` validation tasks (train tasks when there is no val dataset). The optimizer is
    ``optimizer_model`` at ``optimizer_endpoint`` (a base URL ending in ``/v1``) with
    ``optimizer_api_key``; an ``optimizer`` `LLM` resource supplies whichever is not given.
    ``timeout`` bounds each batch of rollouts, in seconds.

    A child edits every optimised template of its parent; an edit that is empty, malformed, cut
    short (an unclosed ``<prompt>``) or whose placeholders (names, conversions, format specs) differ
    from the original template's is rejected (that template stays the parent's), and a child that
    ends up identical to a known candidate is dropped. The best candidate is published as the next
    version of the fit's resources; a search that fails (the optimizer unreachable, say) or is
    interrupted publishes the best scored so far before it raises, since each candidate's own
    resources became the latest.
    Returns ``{"best_prompts": {name: template}, "best_reward": float, "resources_id": str, "version": int}``.
    """

    name = "apo"

    def __init__(
        self,
        *,
        prompts: list[str] | None = None,
        beam_width: int = 2,
        branch_factor: int = 2,
        rounds: int = 3,
        train_batch_size: int = 4,
        val_batch_size: int = 8,
        critique_examples: int = 3,
        optimizer_model: str | None = None,
        optimizer_endpoint: str | None = None,
        optimizer_api_key: str | None = None,
        timeout: float | None = None,
        missing_reward: float = 0.0,
    ) -> None:
        counts = {
            "beam_width": beam_width,
            "branch_factor": branch_factor,
            "rounds": rounds,
            "train_batch_size": train_batch_size,
            "val_batch_size": val_batch_size,
            "critique_examples": critique_examples,
        }
        for option, value in counts.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"apo option {option} must be a positive integer, not {value!r}")
        if prompts is not None and (
            not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts)
        ):
            raise ValueError(f"apo option prompts must be a non-empty list of resource names, not {prompts!r}")
        if prompts is not None and len(set(prompts)) != len(prompts):
            raise ValueError(f"apo option prompts names a resource twice: {prompts!r}")
        for option, text in (
            ("optimizer_model", optimizer_model),
            ("optimizer_endpoint", optimizer_endpoint),
            ("optimizer_api_key", optimizer_api_key),
        ):
            if text is not None and (not isinstance(text, str) or not text):
                raise ValueError(f"apo option {option} must be a non-empty string, not {text!r}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
            raise ValueError(f"apo option timeout must be a positive number of seconds, not {timeout!r}")
        if (
            isinstance(missing_reward, bool)
            or not isinstance(missing_reward, int | float)
            or not math.isfinite(missing_reward)
        ):
            raise ValueError(f"apo option missing_reward must be a finite number, not {missing_reward!r}")
        self.prompts = prompts
        self.beam_width = beam_width
        self.branch_factor = branch_factor
        self.rounds = rounds
        self.train_batch_size = train_batch_size
        self.val_batch_size = val_batch_size
        self.critique_examples = critique_examples
        self.optimizer_model = optimizer_model
        self.optimizer_endpoint = optimizer_endpoint
        self.optimizer_api_key = optimizer_api_key
        self.timeout = timeout
        self.missing_reward = float(missing_reward)

    async def run(self, context: AlgorithmContext) -> dict[str, Any]:
        base = dict(context.initial_resources or {})
        originals = self._templates(base)
        placeholders = {name: _placeholders(template.template) for name, template in originals.items()}
        if not context.train_dataset:
            raise ValueError("apo needs a non-empty train dataset")
        val_tasks = list(context.val_dataset or context.train_dataset)[: self.val_batch_size]
        initial = _Candidate(dict(originals))
        async with _Optimizer.from_options(self, base) as optimizer:
            run = _Run(self, context, base, optimizer, placeholders)
            try:
                best = await run.search(initial, val_tasks)
            except BaseException:
                await run.publish_best_so_far(initial)
                raise
        update = await context.publish_resources({**base, **best.templates})
        return {
            "best_prompts": {name: template.template for name, template in best.templates.items()},
            "best_reward": best.val_reward,
            "resources_id": update.resources_id,
            "version": update.version,
        }

    def _templates(self, resources: NamedResources) -> dict[str, PromptTemplate]:
        """The templates to optimise, checked: named ones must exist, be f-string `PromptTemplate`s."""
        names = self.prompts or [name for name, value in resources.items() if isinstance(value, PromptTemplate)]
        if not names:
            raise ValueError("apo found no PromptTemplate in the initial resources to optimise")
        templates: dict[str, PromptTemplate] = {}
        for name in names:
            value = resources.get(name)
            if not isinstance(value, PromptTemplate):
                found = "missing" if value is None else type(value).__name__
                raise ValueError(f"apo option prompts names {name!r}, which is not a PromptTemplate resource ({found})")
            if value.engine != "f-string":
                raise ValueError(f"apo can only edit f-string templates; {name!r} uses {value.engine!r}")
            if _placeholders_or_none(value.template) is None:
                raise ValueError(f"apo cannot read the placeholders of template {name!r}: {value.template!r}")
            templates[name] = value
        return templates


class _Run:
    """The state of one search: the candidates seen, the train cursor, the round's counts."""

    def __init__(
        self,
        apo: APO,
        context: AlgorithmContext,
        base: NamedResources,
        optimizer: _Optimizer,
        placeholders: dict[str, set[Placeholder]],
    ) -> None:
        self.apo = apo
        self.context = context
        self.base = base
        self.optimizer = optimizer
        self.placeholders = placeholders
        self.seen: dict[tuple[tuple[str, str], ...], _Candidate] = {}
        self.cursor = 0

    async def search(self, initial: _Candidate, val_tasks: list[Any]) -> _Candidate:
        self.seen[initial.key] = initial
        beam = [initial]
        for round_number in range(self.apo.rounds):
            children: list[_Candidate] = []
            rejected = 0
            train_rewards: list[float] = []
            for parent in beam:
                made, lost = await self._expand(parent)
                children += made
                rejected += lost
                train_rewards += parent.train_rewards
            pool = beam + children
            for candidate in pool:
                if candidate.val_reward is None:
                    candidate.val_reward = _mean(await self._rewards(candidate, val_tasks, "val"))
            beam = sorted(pool, key=lambda c: -(c.val_reward or 0.0))[: self.apo.beam_width]
            self.context.log_step(
                round_number,
                {
                    "train/reward_mean": _mean(train_rewards),
                    "val/reward_best": beam[0].val_reward or 0.0,
                    "val/reward_mean": _mean([c.val_reward or 0.0 for c in pool]),
                    "candidates/new": float(len(children)),
                    "candidates/rejected": float(rejected),
                },
            )
        return beam[0]

    async def publish_best_so_far(self, initial: _Candidate) -> None:
        """After a failed or interrupted search: each candidate's `add_resources` made it the store's
        latest, so publish the best scored yet (else the initial templates) in its place."""
        scored = [c for c in self.seen.values() if c.val_reward is not None]
        best = max(scored, key=lambda c: c.val_reward or 0.0) if scored else initial
        try:
            await self.context.publish_resources({**self.base, **best.templates})
        except Exception as error:  # the search's own error matters more
            self.context.logger.warning("apo could not publish its best prompts after failing: %s", error)

    async def _expand(self, parent: _Candidate) -> tuple[list[_Candidate], int]:
        """Run a train batch with ``parent``, critique each template, and make its children;
        also returns how many template edits were rejected."""
        tasks = self._next_train_batch()
        rollouts = await self._run(parent, tasks, "train")
        scored = [(await self.context.reward(rollout), rollout) for rollout in rollouts]
        parent.train_rewards = [self.apo.missing_reward if reward is None else reward for reward, _ in scored]
        worst = sorted(scored, key=lambda pair: pair[0] if pair[0] is not None else float("-inf"))
        examples = [await self._example(reward, rollout) for reward, rollout in worst[: self.apo.critique_examples]]
        critiques = {
            name: await self.optimizer.complete(CRITIC, _critique_request(template.template, examples))
            for name, template in parent.templates.items()
        }
        children: list[_Candidate] = []
        rejected = 0
        for _ in range(self.apo.branch_factor):
            templates = dict(parent.templates)
            for name, template in parent.templates.items():
                reply = await self.optimizer.complete(EDITOR, _edit_request(template.template, critiques[name]))
                edited = _edited_template(reply)
                if edited is None or _placeholders_or_none(edited) != self.placeholders[name]:
                    rejected += 1
                    self.context.logger.info("apo: rejected an empty, cut or placeholder-changing edit of %r", name)
                    continue
                templates[name] = PromptTemplate(template=edited, engine=template.engine)
            child = _Candidate(templates)
            if child.key not in self.seen:
                self.seen[child.key] = child
                children.append(child)
        return children, rejected

    def _next_train_batch(self) -> list[Any]:
        """The next ``train_batch_size`` train tasks, wrapping around, so rounds see different tasks."""
        dataset = self.context.train_dataset
        batch = [dataset[(self.cursor + i) % len(dataset)] for i in range(min(self.apo.train_batch_size, len(dataset)))]
        self.cursor = (self.cursor + len(batch)) % len(dataset)
        return batch

    async def _run(self, candidate: _Candidate, tasks: Sequence[Any], mode: RolloutMode) -> list[Rollout]:
        """Each candidate gets its own resources id, so every rollout records exactly what it ran with."""
        if candidate.resources_id is None:
            update = await self.context.store.add_resources({**self.base, **candidate.templates})
            candidate.resources_id = update.resources_id
        return await self.context.enqueue_and_wait(tasks, mode, candidate.resources_id, timeout=self.apo.timeout)

    async def _rewards(self, candidate: _Candidate, tasks: Sequence[Any], mode: RolloutMode) -> list[float]:
        rollouts = await self._run(candidate, tasks, mode)
        rewards = [await self.context.reward(rollout) for rollout in rollouts]
        return [self.apo.missing_reward if reward is None else reward for reward in rewards]

    async def _example(self, reward: float | None, rollout: Rollout) -> str:
        spans = await self.context.store.query_spans(rollout.rollout_id, "latest")
        conversation = self.context.adapter.adapt(spans)
        shown = f"none (rollout {rollout.status})" if reward is None else f"{reward:.4g}"
        text = f"Task: {_text(rollout.input)}\nReward: {shown}\nConversation:\n{_render(conversation)}"
        return text[:MAX_EXAMPLE_CHARS]


class _Optimizer:
    """Chat completions against the optimizer endpoint, over one HTTP session for the whole fit."""

    def __init__(self, model: str, endpoint: str, api_key: str | None, sampling: Mapping[str, Any]) -> None:
        self.model = model
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.sampling = dict(sampling)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.session = aiohttp.ClientSession(headers=headers)

    @classmethod
    def from_options(cls, apo: APO, resources: NamedResources) -> _Optimizer:
        fallback = resources.get(OPTIMIZER_RESOURCE)
        llm = fallback if isinstance(fallback, LLM) else None
        model = apo.optimizer_model or (llm.model if llm else None)
        endpoint = apo.optimizer_endpoint or (llm.endpoint if llm else None)
        if not model or not endpoint:
            raise ValueError(
                "apo needs optimizer_model and optimizer_endpoint options, or an 'optimizer' LLM resource giving them"
            )
        api_key = apo.optimizer_api_key or (llm.api_key if llm else None)
        return cls(model, endpoint, api_key, llm.sampling_parameters if llm else {})

    async def __aenter__(self) -> _Optimizer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.session.close()

    async def complete(self, system: str, user: str) -> str:
        body = {
            **self.sampling,
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        }
        try:
            async with self.session.post(self.url, json=body) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = str(error) or type(error).__name__
            raise OptimizerError(f"optimizer {self.url} could not be reached: {reason}") from None
        if response.status >= 400:
            raise OptimizerError(f"optimizer {self.url} answered {response.status}: {text[:500]}")
        try:
            content = json.loads(text)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise OptimizerError(f"optimizer {self.url} sent no message: {text[:500]}") from None
        if not isinstance(content, str):
            raise OptimizerError(f"optimizer {self.url} sent no text content: {text[:500]}")
        return content


def _critique_request(template: str, examples: list[str]) -> str:
    shown = "\n\n".join(f"Example {i}:\n{example}" for i, example in enumerate(examples, 1))
    return f"Critique this prompt template.\n\nTemplate:\n<prompt>{template}</prompt>\n\n{shown}"


def _edit_request(template: str, critique: str) -> str:
    return (
        "Rewrite this prompt template to address the critique.\n\n"
        f"Template:\n<prompt>{template}</prompt>\n\nCritique:\n{critique}"
    )


def _edited_template(reply: str) -> str | None:
    """The text between the last ``<prompt>`` tags, or the whole reply when the optimizer left them out;
    None when that is empty, or when a ``<prompt>`` is never closed (a reply cut at its token limit)."""
    if reply.rfind("<prompt>") > reply.rfind("</prompt>"):  # also after an earlier, quoted template
        return None
    found = EDITED.findall(reply)
    edited = (found[-1] if found else reply).strip()
    return edited or None


def _placeholders(template: str) -> set[Placeholder]:
    """The fields ``str.format`` fills in, each whole: an edit that keeps a name but changes its spec
    or conversion (``{q:.2f}``, ``{q:{width}}``) would make ``format(q=...)`` raise in every agent.
    Raises ValueError for a malformed template."""
    return {
        (name, conversion, spec) for _, name, spec, conversion in string.Formatter().parse(template) if name is not None
    }


def _placeholders_or_none(template: str) -> set[Placeholder] | None:
    try:
        return _placeholders(template)
    except ValueError:
        return None


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)


def _render(conversation: Any) -> str:
    """Chat messages as ``role: content`` lines; anything else an adapter returns as JSON."""
    if not conversation:
        return "(no LLM call recorded)"
    if isinstance(conversation, list) and all(isinstance(m, dict) and "role" in m for m in conversation):
        return "\n".join(f"{m['role']}: {_text(m.get('content'))}" for m in conversation)
    return _text(conversation)
