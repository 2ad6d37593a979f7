"""agl's tracing runtime: rollout identity on every span, the canonical LLM-call span, and the
zero-code set-up behind ``opentelemetry-instrument``.

    from agl.core.tracing import rollout_context, llm_call, setup_tracing, flush_spans

Loaded at interpreter start-up under ``opentelemetry-instrument``, so this package imports
nothing heavy; the store is opened only when the first spans are exported.
"""

from agl.core.tracing.context import ActiveRollout, current_rollout, rollout_context, run_in_context
from agl.core.tracing.emitters import (
    emit_annotation,
    emit_exception,
    emit_message,
    emit_object,
    emit_reward,
    operation,
)
from agl.core.tracing.llm import LlmCall, llm_call, open_llm_span, start_llm_call

__all__ = [
    "ActiveRollout",
    "LlmCall",
    "current_rollout",
    "emit_annotation",
    "emit_exception",
    "emit_message",
    "emit_object",
    "emit_reward",
    "flush_spans",
    "llm_call",
    "open_llm_span",
    "operation",
    "rollout_context",
    "run_in_context",
    "setup_tracing",
    "start_llm_call",
]


def __getattr__(name: str) -> object:
    if name in ("setup_tracing", "flush_spans"):
        from agl.core.tracing import configure

        return getattr(configure, name)
    raise AttributeError(f"module 'agl.core.tracing' has no attribute {name!r}")
