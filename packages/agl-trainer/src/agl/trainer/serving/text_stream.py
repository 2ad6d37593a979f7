"""Turning a growing list of token ids into text deltas for streaming.

Text is always the decoding of all ids so far (a token alone can be half a UTF-8 character or
need its neighbour's space), and a delta is sent only once it is settled: nothing while the text
ends in an incomplete character, and the last characters are held back while they could still
become a stop string (which is cut from the answer, so it must never have been sent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self.sent = ""

    def delta(self, token_ids: Sequence[int]) -> str:
        """The text that may be sent now that ``token_ids`` were generated (possibly empty)."""
        text = self._decode(token_ids)
        if text.endswith("\ufffd"):
            return ""
        # Up to a stop string that arrived (the engine ends the answer there), else all but the held-back tail.
        cut = min((i for i in (text.find(s) for s in self._stop) if i >= 0), default=max(0, len(text) - self._hold))
        settled = text[:cut]
        if not settled.startswith(self.sent) or len(settled) <= len(self.sent):
            return ""
        new, self.sent = settled[len(self.sent) :], settled
        return new

    def finish(self, final_text: str) -> str:
        """The rest of the final text (the engine's, stop string already cut)."""
        rest = final_text[len(self.sent) :] if final_text.startswith(self.sent) else ""
        self.sent = final_text
        return rest
