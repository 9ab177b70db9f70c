"""Fill servers: execution venues that stream random fills to the controller.

Each server draws a reproducible stream from its seed: Poisson arrivals, tickers from the
universe, prices on a per-ticker random walk in cents, mostly buys and some sells. A server sells
only out of what it has bought itself, so its sells never exceed what the accounts hold.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from allocation.v1 import allocation_pb2, controller_service_pb2, controller_service_pb2_grpc
from controller.transport import PLAINTEXT, TLSConfig
from simulators.reliable import ReliableStream

log = logging.getLogger(__name__)

# Above this rate (or with batches) the server prints one summary line per second.
PER_FILL_OUTPUT_MAX_RATE = 20.0
# Messages in flight per server in load mode (--rate 0).
LOAD_WINDOW = 32


class FillGenerator:
    """A reproducible stream of fills: same seed, same fills."""

    def __init__(
        self, seed: int, id_prefix: str, tickers: tuple[str, ...], sell_ratio: float
    ) -> None:
        """Fills with ids ``<id_prefix>-<n>`` over ``tickers``; about ``sell_ratio`` are sells."""
        self._rng = random.Random(seed)
        self._prefix = id_prefix
        self._tickers = tickers
        self._sell_ratio = sell_ratio
        self._cents = {t: self._rng.randint(2_000, 50_000) for t in tickers}
        self._held: Counter[str] = Counter()
        self._count = 0

    def next(self) -> allocation_pb2.Fill:
        """The next fill of the stream."""
        rng = self._rng
        ticker = rng.choice(self._tickers)
        cents = self._cents[ticker]
        cents = max(1, cents + round(rng.gauss(0, cents * 0.002)))
        self._cents[ticker] = cents
        self._count += 1
        sell = self._held[ticker] > 0 and rng.random() < self._sell_ratio
        if sell:
            quantity = rng.randint(1, min(self._held[ticker], 1_000))
            self._held[ticker] -= quantity
        else:
            quantity = rng.randint(1, 1_000)
            self._held[ticker] += quantity
        return allocation_pb2.Fill(
            fill_id=f"{self._prefix}-{self._count:09d}",
            ticker=ticker,
            price=f"{cents // 100}.{cents % 100:02d}",
            quantity=quantity,
            side=allocation_pb2.SIDE_SELL if sell else allocation_pb2.SIDE_BUY,
        )


@dataclass
class FillStats:
    """What a fill server sent and what the controller answered (shared across servers)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    generated: int = 0
    allocated: int = 0
    pending: int = 0
    duplicates: int = 0
    rejected: int = 0
    net: Counter[str] = field(default_factory=Counter)
    """Net shares per ticker (buys minus sells) of every fill the controller has accepted."""


class FillServer:
    """One venue: generates fills at ``rate`` per second and streams them in batches."""

    def __init__(
        self,
        address: str,
        generator: FillGenerator,
        rate: float,
        batch: int,
        count: int | None,
        stats: FillStats,
        name: str,
        tls: TLSConfig = PLAINTEXT,
    ) -> None:
        """``rate`` 0 means as fast as the controller acknowledges; ``count`` None runs forever.
        ``tls`` secures the link to the controller."""
        self._generator = generator
        self._rate = rate
        self._batch = batch
        self._count = count
        self._stats = stats
        self._name = name
        self._verbose = batch == 1 and 0 < rate <= PER_FILL_OUTPUT_MAX_RATE
        self._stopping = threading.Event()
        self.stream: ReliableStream[
            controller_service_pb2.StreamFillsRequest, controller_service_pb2.StreamFillsResponse
        ] = ReliableStream(
            address,
            lambda channel: controller_service_pb2_grpc.ControllerServiceStub(channel).StreamFills,
            self._acknowledged,
            name,
            tls,
        )

    def stop(self) -> None:
        """Stop generating and drop what is unacknowledged (SIGINT)."""
        self._stopping.set()
        self.stream.cancel()

    def run(self) -> None:
        """Generate (until ``count`` or ``stop``) while the stream sends; returns when drained."""
        sender = threading.Thread(target=self.stream.run, name=f"{self._name}-stream")
        sender.start()
        timing = random.Random()
        next_time = time.monotonic()
        produced = 0
        pending: list[allocation_pb2.Fill] = []
        while not self._stopping.is_set() and (self._count is None or produced < self._count):
            if self._rate > 0:
                next_time += timing.expovariate(self._rate)
                if self._stopping.wait(max(0.0, next_time - time.monotonic())):
                    break
            else:
                # Load mode: no pacing, but a bounded window of unanswered messages.
                self.stream.wait_for_room(LOAD_WINDOW)
            pending.append(self._generator.next())
            produced += 1
            if len(pending) >= self._batch:
                self._send(pending)
                pending = []
        if pending and not self._stopping.is_set():
            self._send(pending)
        self.stream.close()
        sender.join()

    def _send(self, fills: list[allocation_pb2.Fill]) -> None:
        with self._stats.lock:
            self._stats.generated += len(fills)
        self.stream.send(controller_service_pb2.StreamFillsRequest(fills=fills))

    def _acknowledged(
        self,
        request: controller_service_pb2.StreamFillsRequest,
        response: controller_service_pb2.StreamFillsResponse,
    ) -> None:
        stats = self._stats
        if response.HasField("rejection"):
            with stats.lock:
                stats.rejected += len(request.fills)
            log.warning(
                "message refused",
                extra={"fills": len(request.fills), "reason": response.rejection.message},
            )
            return
        results = response.batch.results
        with stats.lock:
            for sent, result in zip(request.fills, results, strict=True):
                outcome = result.WhichOneof("outcome")
                if outcome == "rejection":
                    stats.rejected += 1
                    log.warning(
                        "fill rejected",
                        extra={"fill_id": sent.fill_id, "reason": result.rejection.message},
                    )
                    continue
                # A duplicate was accepted once before (its first ack was lost): count it once.
                if outcome == "duplicate":
                    stats.duplicates += 1
                elif result.allocation.status == allocation_pb2.FILL_STATUS_PENDING:
                    stats.pending += 1
                else:
                    stats.allocated += 1
                signed = sent.quantity if sent.side != allocation_pb2.SIDE_SELL else -sent.quantity
                stats.net[sent.ticker] += signed
        if self._verbose:
            for sent, result in zip(request.fills, results, strict=True):
                print(describe(sent, result), flush=True)


def describe(sent: allocation_pb2.Fill, result: controller_service_pb2.FillResult) -> str:
    """One concise line for an acknowledged fill."""
    side = "SELL" if sent.side == allocation_pb2.SIDE_SELL else "BUY"
    head = f"{sent.fill_id} {side} {sent.quantity} {sent.ticker} @ {sent.price}"
    outcome = result.WhichOneof("outcome")
    if outcome == "rejection":
        return f"{head} -> rejected: {result.rejection.message}"
    allocation = result.duplicate if outcome == "duplicate" else result.allocation
    if allocation.status == allocation_pb2.FILL_STATUS_PENDING:
        return f"{head} -> pending (no split yet)"
    shares = " ".join(f"{a.account}:{a.quantity}" for a in allocation.allocations)
    repeat = " (duplicate)" if outcome == "duplicate" else ""
    return f"{head} -> {shares} [seq {allocation.sequence}]{repeat}"
