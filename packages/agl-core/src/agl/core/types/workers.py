"""Workers (runners) as the store sees them: idle or busy, and when they last spoke."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

WorkerStatus = Literal["idle", "busy", "unknown"]
WORKER_STATUSES: tuple[str, ...] = get_args(WorkerStatus)


class Worker(BaseModel):
    model_config = ConfigDict(frozen=True)

    worker_id: str
    status: WorkerStatus = "unknown"
    heartbeat_stats: dict[str, Any] = Field(default_factory=dict)
    last_heartbeat_time: float | None = None
    last_dequeue_time: float | None = None
    last_busy_time: float | None = None
    last_idle_time: float | None = None
    current_rollout_id: str | None = None
    current_attempt_id: str | None = None
