"""Operational limits of the controller's API (documented in the README's limits table)."""

from __future__ import annotations

# What a default gRPC client accepts (4 MiB), less room for a response's own framing.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024 - 64 * 1024
MAX_FILLS_PER_MESSAGE = 10_000
