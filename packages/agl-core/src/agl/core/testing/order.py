"""Comparing span order in tests, now that sequence ids come from the clock."""

from __future__ import annotations

from collections.abc import Iterable


def ranks(sequence_ids: Iterable[int]) -> list[int]:
    """Each id's place among the distinct ids given, from 1.

    Sequence ids are microseconds (`agl.core.ids.sequence_clock`), so a test states the
    order it expects, ``[1, 2, 3]``, rather than values. Equal ids get equal ranks: a repeat shows.
    """
    ids = list(sequence_ids)
    place = {value: rank for rank, value in enumerate(sorted(set(ids)), start=1)}
    return [place[value] for value in ids]
