"""Adapters: the spans of one attempt turned into what an algorithm trains on.

    from agl.core.adapters import spans_to_triplets, spans_to_messages

- `spans_to_triplets` / `TraceTripletAdapter`: (prompt, response, reward) per LLM call, with the
  exact token ids and logprobs, for RL and SFT on ids.
- `spans_to_messages` / `TraceMessagesAdapter`: the conversation as chat messages, for prompt
  optimisation and SFT on text.
"""

from agl.core.adapters.messages import TraceMessagesAdapter, spans_to_messages
from agl.core.adapters.triplets import TraceTripletAdapter, spans_to_triplets

__all__ = ["TraceMessagesAdapter", "TraceTripletAdapter", "spans_to_messages", "spans_to_triplets"]
