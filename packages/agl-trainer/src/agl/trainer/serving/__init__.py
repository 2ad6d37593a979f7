"""Model serving: inference engines with exact token ids, behind an OpenAI-compatible HTTP app.

- `engine`: the `Engine` protocol (`SamplingParams`, `Generation`) every engine implements.
- `model_server`: the `ModelServer` protocol that ``agl_register_model_servers`` factories return.
- `transformers_engine`: an embedded engine on transformers (CPU or GPU), weights reloadable live.
- `openai_app`: the OpenAI-compatible FastAPI app over any engine.
- `embedded`: the "transformers" model server (engine + app on a uvicorn thread).
- `cli`: ``agl serve MODEL``.

Heavy imports (torch, transformers) happen in the modules that need them, not here.
"""

from agl.trainer.serving.engine import Engine, Generation, PromptError, SamplingParams
from agl.trainer.serving.model_server import ModelServer, ModelServerFactory

__all__ = ["Engine", "Generation", "ModelServer", "ModelServerFactory", "PromptError", "SamplingParams"]
