"""AIP-158 pagination shared by both services: page sizes, opaque tokens, byte-bounded pages.

A page never exceeds ``MAX_PAGE_BYTES``, well under the 4 MiB a default gRPC client accepts,
whatever the accounts hold: it may carry fewer accounts than asked, as AIP-158 allows.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.message import Message

from controller.domain import Rejected, RejectReason

# What page tokens point at: the most recent listings, each for a while.
LISTING_CAPACITY = 4
LISTING_SECONDS = 300.0
DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 5_000
MAX_PAGE_BYTES = 3 * 1024 * 1024
# Bytes a repeated message field adds around each entry: tag and length prefix.
_ENTRY_OVERHEAD = 6

M = TypeVar("M", bound=Message)
T = TypeVar("T")


def page_size(
    requested: int, default: int = DEFAULT_PAGE_SIZE, largest: int = MAX_PAGE_SIZE
) -> int:
    """The page size to use for a request's ``page_size`` (0 = default, capped at the max)."""
    if requested < 0:
        raise Rejected(
            RejectReason.INVALID_ARGUMENT,
            "page_size",
            f"page_size {requested} must be >= 0 (0 means {default})",
        )
    return min(requested or default, largest)


def encode_token(key: str, offset: int) -> str:
    """An opaque token for the page starting at ``offset`` of the listing ``key``."""
    return base64.urlsafe_b64encode(f"{offset}:{key}".encode()).decode()


def decode_token(token: str) -> tuple[str, int]:
    """(key, offset) of a token made by ``encode_token``; ``Rejected`` for anything else."""
    try:
        offset, _, key = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        start = int(offset)
    except (binascii.Error, UnicodeError, ValueError):
        start = -1
    if start < 0 or not key:
        raise Rejected(
            RejectReason.INVALID_ARGUMENT,
            "page_token",
            f"page_token {token[:40]!r} is not a token this service issued",
        )
    return key, start


def fill_page(
    target: RepeatedCompositeFieldContainer[M],
    items: Iterable[T],
    write: Callable[[M, T], None],
    budget: int = MAX_PAGE_BYTES,
) -> int:
    """Append ``items`` to the empty ``target`` (``write`` fills each new entry) while the page
    stays within ``budget`` bytes, and always at least one. Returns how many were appended."""
    used = 0
    for item in items:
        entry = target.add()
        write(entry, item)
        used += entry.ByteSize() + _ENTRY_OVERHEAD
        if used > budget and len(target) > 1:
            del target[-1]
            break
    return len(target)


class ListingCache(Generic[T]):
    """The items page tokens point at (a snapshot, a report): every page of one listing reads
    the same item. At most ``capacity`` are kept, each for ``lifetime`` seconds; thread-safe."""

    def __init__(self, capacity: int = LISTING_CAPACITY, lifetime: float = LISTING_SECONDS) -> None:
        """An empty cache."""
        self._capacity = capacity
        self._lifetime = lifetime
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[T, float]] = OrderedDict()

    def add(self, item: T) -> str:
        """Keep ``item`` for a new listing; returns the key its page tokens carry."""
        key = secrets.token_hex(8)
        with self._lock:
            self._items[key] = (item, time.monotonic() + self._lifetime)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> T | None:
        """The item of a listing, unless it expired or was pushed out by newer listings."""
        with self._lock:
            self._expire()
            found = self._items.get(key)
        return found[0] if found else None

    def newest(self) -> tuple[str, T] | None:
        """The most recently added listing still kept, with its key."""
        with self._lock:
            self._expire()
            if not self._items:
                return None
            key, (item, _) = next(reversed(self._items.items()))
        return key, item

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, expires) in self._items.items() if expires <= now]:
            del self._items[key]


def listing_expired(field: str = "page_token") -> Rejected:
    """The refusal of a page token whose listing is gone (or was never issued)."""
    return Rejected(
        RejectReason.INVALID_ARGUMENT,
        field,
        f"{field} has expired or does not belong to a current listing; start again without it",
    )
