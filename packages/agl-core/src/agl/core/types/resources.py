"""Resources an algorithm publishes to agents (a model endpoint, a prompt), versioned in the store."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class LLM(BaseModel):
    """An OpenAI-compatible model endpoint."""

    model_config = ConfigDict(frozen=True)

    resource_type: Literal["llm"] = "llm"
    endpoint: str
    model: str
    api_key: str | None = None
    sampling_parameters: dict[str, Any] = Field(default_factory=dict)


class ProxyLLM(LLM):
    """An endpoint served by the agl LLM proxy, routed per rollout and attempt.

    The endpoint is a template; `base_url` fills in the ids so every call is attributed.
    """

    resource_type: Literal["proxy_llm"] = "proxy_llm"  # type: ignore[assignment]

    def base_url(self, rollout_id: str, attempt_id: str) -> str:
        return f"{self.endpoint.rstrip('/')}/rollout/{rollout_id}/attempt/{attempt_id}/v1"


class PromptTemplate(BaseModel):
    """A prompt an algorithm may rewrite; ``engine`` says how placeholders are filled."""

    model_config = ConfigDict(frozen=True)

    resource_type: Literal["prompt_template"] = "prompt_template"
    template: str
    engine: Literal["f-string", "jinja", "poml"] = "f-string"

    def format(self, **values: Any) -> str:
        if self.engine != "f-string":
            raise NotImplementedError(f"prompt engine {self.engine!r} is not supported yet")
        return self.template.format(**values)


Resource = Annotated[LLM | ProxyLLM | PromptTemplate, Field(discriminator="resource_type")]
NamedResources = dict[str, Resource]


class ResourcesUpdate(BaseModel):
    """One id's resources; ``version`` counts the updates made under that id."""

    model_config = ConfigDict(frozen=True)

    resources_id: str
    version: int = Field(ge=1)
    create_time: float
    update_time: float
    resources: NamedResources
