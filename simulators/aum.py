"""The AUM server: publishes a random account split every interval, the first one at once."""

from __future__ import annotations

import logging
import random
import threading

from allocation.v1 import allocation_pb2, controller_service_pb2, controller_service_pb2_grpc
from simulators.reliable import ReliableStream

log = logging.getLogger(__name__)

# Percentages are drawn in hundredths of a percent, so they are exact and sum to exactly 100.
UNITS = 10_000


def random_split(rng: random.Random, accounts: int, split_id: str) -> allocation_pb2.AumSplit:
    """A split over ``acct-01 .. acct-NN`` with two-decimal percents summing to exactly 100."""
    weights = [rng.randint(1, 100) for _ in range(accounts)]
    units = [w * UNITS // sum(weights) for w in weights]
    # Hand the rounding remainder out one unit each to the largest weights: still exact.
    for i in sorted(range(accounts), key=lambda i: -weights[i])[: UNITS - sum(units)]:
        units[i] += 1
    return allocation_pb2.AumSplit(
        split_id=split_id,
        percentages={f"acct-{i + 1:02d}": f"{u // 100}.{u % 100:02d}" for i, u in enumerate(units)},
    )


class AumServer:
    """Sends ``random_split`` over ``StreamAumSplits`` every ``interval`` seconds."""

    def __init__(
        self, address: str, interval: float, accounts: int, seed: int | None, id_prefix: str
    ) -> None:
        """Splits over ``accounts`` accounts with ids ``<id_prefix>-<n>``."""
        self._interval = interval
        self._accounts = accounts
        self._rng = random.Random(seed)
        self._prefix = id_prefix
        self._stopping = threading.Event()
        self.stream: ReliableStream[
            controller_service_pb2.StreamAumSplitsRequest,
            controller_service_pb2.StreamAumSplitsResponse,
        ] = ReliableStream(
            address,
            lambda channel: (
                controller_service_pb2_grpc.ControllerServiceStub(channel).StreamAumSplits
            ),
            self._acknowledged,
            "aum",
        )

    def stop(self) -> None:
        """Stop publishing (SIGINT)."""
        self._stopping.set()
        self.stream.cancel()

    def run(self) -> None:
        """Publish until stopped."""
        sender = threading.Thread(target=self.stream.run, name="aum-stream")
        sender.start()
        number = 0
        while True:
            number += 1
            split = random_split(self._rng, self._accounts, f"{self._prefix}-{number}")
            self.stream.send(controller_service_pb2.StreamAumSplitsRequest(split=split))
            if self._stopping.wait(self._interval):
                break
        sender.join()

    @staticmethod
    def _acknowledged(
        request: controller_service_pb2.StreamAumSplitsRequest,
        response: controller_service_pb2.StreamAumSplitsResponse,
    ) -> None:
        if response.HasField("rejection"):
            print(f"split {request.split.split_id} rejected: {response.rejection.message}")
            return
        shares = ", ".join(f"{a} {p}%" for a, p in sorted(request.split.percentages.items()))
        print(f"split {response.split_id} in force: {shares}", flush=True)
