"""Attribute names agl reads and writes. ``agl.*`` for what OpenTelemetry's GenAI conventions
lack; ``gen_ai.*`` for the rest. Structured values (message lists, tool definitions) are stored as
one JSON string each, since OpenTelemetry attributes hold only scalars and scalar lists."""

# Which rollout, attempt and position a span belongs to (stamped when the span starts).
ROLLOUT_ID = "agl.rollout.id"
ATTEMPT_ID = "agl.attempt.id"
SEQUENCE_ID = "agl.sequence_id"

# The canonical LLM-call span: one per physical model call, named "chat {model}".
LLM_CALL = "agl.llm.call"
LLM_CACHED = "agl.llm.cached"  # true: answered from a client-side cache, no request sent (off-policy)
PROMPT_TOKEN_IDS = "agl.llm.prompt_token_ids"
RESPONSE_TOKEN_IDS = "agl.llm.response_token_ids"
RESPONSE_LOGPROBS = "agl.llm.response_logprobs"
AGENT_NAME = "agl.agent.name"

# The last span of a program that ran as its own observed rollout: the store ends the rollout
# with this outcome ("succeeded" or "failed") when the span arrives, whatever carried it there.
PROCESS_EXIT_SPAN = "agl.process.exit"
PROCESS_OUTCOME = "agl.process.outcome"

# Set by the store server on an OTLP span too large to store whole: what it dropped, and why.
SPAN_DROPPED = "agl.span.dropped"

# A training run is a rollout (its metadata has "agl.trainer.run": true) with one span per step,
# named "agl.trainer.step", carrying the step number and each metric as "agl.trainer.metric.<name>".
TRAINER_RUN = "agl.trainer.run"
TRAINER_STEP = "agl.trainer.step"
TRAINER_METRIC_PREFIX = "agl.trainer.metric."

# Emitted signals.
SPAN_KIND = "agl.span.kind"  # reward | message | object | exception | annotation | operation
REWARD = "agl.reward"  # a scalar reward; named dimensions are "agl.reward.<name>"
REWARD_PREFIX = "agl.reward."
MESSAGE = "agl.message"
MESSAGE_ROLE = "agl.message.role"
OBJECT = "agl.object"
OPERATION_INPUT = "agl.operation.input"
OPERATION_OUTPUT = "agl.operation.output"

# OpenTelemetry GenAI conventions.
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
TOOL_DEFINITIONS = "gen_ai.tool.definitions"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"  # of the input tokens, read from cache
USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"  # of the output tokens, spent reasoning
CONVERSATION_ID = "gen_ai.conversation.id"  # a conversation the provider keeps (OpenAI's Conversations API)
REQUEST_PREFIX = "gen_ai.request."  # + temperature, top_p, max_tokens, seed, ...
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
TOOL_NAME = "gen_ai.tool.name"
TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
TOOL_CALL_RESULT = "gen_ai.tool.call.result"
# General OpenTelemetry conventions the LLM-call span uses too.
ERROR_TYPE = "error.type"  # a failed call's exception class (fully qualified) or the provider's error code
SERVER_ADDRESS = "server.address"  # the model server's host, from the client's base URL
SERVER_PORT = "server.port"
# A LangGraph node run (agl-instrument-langchain): the node, and its attempt under a RetryPolicy
# (from 1; a failed attempt's span in error), which the adapters read to leave retried attempts out.
LANGGRAPH_NODE = "langgraph.node"
LANGGRAPH_NODE_ATTEMPT = "langgraph.node.attempt"
# An agent's try at a CrewAI task when CrewAI retries a failed one (agl-instrument-crewai; from 1).
CREWAI_AGENT_ATTEMPT = "crewai.agent.attempt"
RETRIED_ATTEMPTS = (LANGGRAPH_NODE_ATTEMPT, CREWAI_AGENT_ATTEMPT)
"""Attributes numbering the tries of a unit of work a framework retries, a failed try's span in error."""

# Span names and operations every framework instrumentor uses, so traces read the same whatever
# produced them: "invoke_agent {agent}", "execute_tool {tool}", "invoke_workflow {team/crew/graph}",
# and the LLM-call span "chat {model}" (agl.core.tracing.llm).
INVOKE_AGENT = "invoke_agent"
EXECUTE_TOOL = "execute_tool"
INVOKE_WORKFLOW = "invoke_workflow"
