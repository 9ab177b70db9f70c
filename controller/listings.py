"""The snapshots behind ``GetPositions`` page tokens: every page of a listing reads one snapshot.

A first page takes a snapshot (a few milliseconds of the writer's time) unless the newest one
is still current (nothing was sequenced since), so concurrent listings of an idle book share
one. Memory is bounded: at most ``capacity`` snapshots, each kept for ``lifetime`` seconds.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from controller.journal import Counters
from controller.snapshot import BookSnapshot

CAPACITY = 4
LIFETIME_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class Listing:
    """One snapshot being paged through."""

    key: str
    snapshot: BookSnapshot
    counters: Counters
    taken_ns: int
    """Wall-clock time of the snapshot: every page reports the same generate_time."""
    expires: float


class Listings:
    """Recent snapshots by opaque key; thread-safe."""

    def __init__(
        self,
        take: Callable[[], tuple[BookSnapshot, Counters]],
        capacity: int = CAPACITY,
        lifetime: float = LIFETIME_SECONDS,
    ) -> None:
        """``take`` asks the writer for a snapshot and the counters it reflects."""
        self._take = take
        self._capacity = capacity
        self._lifetime = lifetime
        self._lock = threading.Lock()
        self._listings: OrderedDict[str, Listing] = OrderedDict()

    def start(self, current: Counters) -> Listing:
        """A listing for a first page: the newest snapshot if it reflects ``current`` (the
        counters as of the last commit), else a new one."""
        with self._lock:
            self._expire()
            if self._listings:
                newest = next(reversed(self._listings.values()))
                if newest.counters == current:
                    return newest
        snapshot, counters = self._take()
        listing = Listing(
            secrets.token_hex(8),
            snapshot,
            counters,
            time.time_ns(),
            time.monotonic() + self._lifetime,
        )
        with self._lock:
            self._listings[listing.key] = listing
            while len(self._listings) > self._capacity:
                self._listings.popitem(last=False)
        return listing

    def find(self, key: str) -> Listing | None:
        """The listing a page token names, unless it expired or was evicted."""
        with self._lock:
            self._expire()
            return self._listings.get(key)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, listing in self._listings.items() if listing.expires <= now]:
            del self._listings[key]
