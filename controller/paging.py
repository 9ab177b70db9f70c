"""AIP-158 pagination shared by both services: page sizes, opaque tokens, byte-bounded pages.

A page never exceeds ``MAX_PAGE_BYTES``, well under the 4 MiB a default gRPC client accepts,
whatever the accounts hold: it may carry fewer accounts than asked, as AIP-158 allows.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable
from typing import TypeVar

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.message import Message

from controller.domain import Rejected, RejectReason

DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 5_000
MAX_PAGE_BYTES = 3 * 1024 * 1024
# Bytes a repeated message field adds around each entry: tag and length prefix.
_ENTRY_OVERHEAD = 6

M = TypeVar("M", bound=Message)
T = TypeVar("T")


def page_size(requested: int) -> int:
    """The page size to use for a request's ``page_size`` (0 = default, capped at the max)."""
    if requested < 0:
        raise Rejected(
            RejectReason.INVALID_ARGUMENT,
            "page_size",
            f"page_size {requested} must be >= 0 (0 means {DEFAULT_PAGE_SIZE})",
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


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
