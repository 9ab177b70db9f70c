"""The AUM server: publishes a random account split every interval, the first one at once."""

from __future__ import annotations

import logging
import random
import threading

from allocation.v1 import allocation_pb2, controller_service_pb2, controller_service_pb2_grpc
from controller.transport import PLAINTEXT, TLSConfig
from simulators.reliable import ReliableStream

log = logging.getLogger(__name__)

# Up to this many accounts percentages have two decimals; beyond it six, so that every account
# still gets a non-zero share of the 100 %.
TWO_DECIMAL_ACCOUNTS = 100
# Splits over more accounts are announced by their size, not account by account.
SHOWN_ACCOUNTS = 20


def random_split(rng: random.Random, accounts: int, split_id: str) -> allocation_pb2.AumSplit:
    """A split over ``acct-01 .. acct-NN`` with percents summing to exactly 100: drawn in units
    of 0.01 % (0.000001 % beyond ``TWO_DECIMAL_ACCOUNTS`` accounts), so they are exact."""
    places = 2 if accounts <= TWO_DECIMAL_ACCOUNTS else 6
    scale = 10**places
    total_units = 100 * scale
    weights = [rng.randint(1, 100) for _ in range(accounts)]
    weight_total = sum(weights)
    units = [w * total_units // weight_total for w in weights]
    # Hand the rounding remainder out one unit each to the largest weights: still exact.
    for i in sorted(range(accounts), key=lambda i: -weights[i])[: total_units - sum(units)]:
        units[i] += 1
    width = max(2, len(str(accounts)))
    return allocation_pb2.AumSplit(
        split_id=split_id,
        percentages={
            f"acct-{i + 1:0{width}d}": f"{u // scale}.{u % scale:0{places}d}"
            for i, u in enumerate(units)
        },
    )


class AumServer:
    """Sends ``random_split`` over ``StreamAumSplits`` every ``interval`` seconds."""

    def __init__(
        self,
        address: str,
        interval: float,
        accounts: int,
        seed: int | None,
        id_prefix: str,
        tls: TLSConfig = PLAINTEXT,
    ) -> None:
        """Splits over ``accounts`` accounts with ids ``<id_prefix>-<n>``, sent over ``tls``."""
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
            tls,
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
        receipt = response.duplicate if response.HasField("duplicate") else response.accepted
        percentages = sorted(request.split.percentages.items())
        if len(percentages) > SHOWN_ACCOUNTS:
            print(f"split {receipt.split_id} in force: {len(percentages):,} accounts", flush=True)
            return
        shares = ", ".join(f"{a} {p}%" for a, p in percentages)
        print(f"split {receipt.split_id} in force: {shares}", flush=True)
