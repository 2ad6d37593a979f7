"""Seeds for requests that bring none, independent of the order requests arrive in.

Concurrent runners send an engine the same requests in a different interleaving on every run. A
seed drawn per arrival would give a rollout another sample each time, so a seeded training run
would not repeat. Here the seed comes from the engine's seed, the weights' version, the prompt's
tokens and how many times that prompt was asked for under those weights: the n samples of one
task's prompt are n distinct draws, and the set of (prompt, sample) pairs a run produces is the
same whatever the interleaving.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
import threading
from array import array
from collections.abc import Sequence

MAX_PROMPTS_REMEMBERED = 1 << 16
"""Distinct prompts counted per weights version before the counts restart under a new version: a
bound on memory (a few MB) for a server that never loads new weights. Seeds stay distinct across
a restart; only the requests in flight at that moment may lose their arrival-order independence."""


class RequestSeeds:
    """Hands out per-request seeds; thread-safe."""

    def __init__(self, seed: int | None) -> None:
        self._base = seed if seed is not None else secrets.randbits(63)
        self._version = 0
        self._uses: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def next_weights(self) -> None:
        """New weights are served: samples from here on are new draws, and the counts start over."""
        with self._lock:
            self._restart()

    def for_prompt(self, prompt: Sequence[int]) -> int:
        """The seed of this prompt's next unseeded request."""
        digest = hashlib.blake2b(array("q", prompt).tobytes(), digest_size=16).digest()
        with self._lock:
            if len(self._uses) >= MAX_PROMPTS_REMEMBERED and digest not in self._uses:
                self._restart()
            use = self._uses.get(digest, 0)
            self._uses[digest] = use + 1
            version = self._version
        material = struct.pack("<QQQ", self._base % 2**64, version, use) + digest
        return int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "little")

    def _restart(self) -> None:
        self._version += 1
        self._uses.clear()
