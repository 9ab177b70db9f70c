"""The snapshots behind ``GetPositions`` page tokens: every page of a listing reads one snapshot.

A first page takes a snapshot (a few milliseconds of the writer's time) unless the newest one
is still current (nothing was sequenced since), so concurrent listings of an idle book share
one. Memory is bounded by the listing cache: a few snapshots, each for a few minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from controller.journal import Counters
from controller.paging import ListingCache
from controller.snapshot import BookSnapshot


@dataclass(frozen=True, slots=True)
class Listing:
    """One snapshot being paged through."""

    snapshot: BookSnapshot
    counters: Counters
    taken_ns: int
    """Wall-clock time of the snapshot: every page reports the same generate_time."""


class Listings:
    """Recent snapshots by page-token key; thread-safe."""

    def __init__(self, take: Callable[[], tuple[BookSnapshot, Counters]]) -> None:
        """``take`` asks the writer for a snapshot and the counters it reflects."""
        self._take = take
        self._cache: ListingCache[Listing] = ListingCache()

    def start(self, current: Counters) -> tuple[str, Listing]:
        """A listing for a first page: the newest snapshot if it reflects ``current`` (the
        counters as of the last commit), else a new one. Returns its key and the listing."""
        newest = self._cache.newest()
        if newest is not None and newest[1].counters == current:
            return newest
        snapshot, counters = self._take()
        listing = Listing(snapshot, counters, time.time_ns())
        return self._cache.add(listing), listing

    def find(self, key: str) -> Listing | None:
        """The listing a page token names, unless it expired or was evicted."""
        return self._cache.get(key)
