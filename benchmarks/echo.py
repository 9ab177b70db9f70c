"""``python -m benchmarks.echo``: the transport ceiling, a ControllerService that does no work.

StreamFills answers every fill with an allocation of the shape the controller sends (one entry
per receiving account: min(accounts, quantity), since accounts that get nothing are omitted), so
the benchmark can compare the controller with the pure gRPC + protobuf cost.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator

import grpc

from allocation.v1 import allocation_pb2, controller_service_pb2, controller_service_pb2_grpc
from controller.serving import configure_logging, create_server, wait_for_signal

log = logging.getLogger("echo")


class EchoService(controller_service_pb2_grpc.ControllerServiceServicer):
    """Answers fills with a fixed-shape allocation, without validating or storing anything."""

    def __init__(self, accounts: int) -> None:
        self._shares = [
            allocation_pb2.AccountQuantity(account=f"acct-{i:04d}", quantity=1)
            for i in range(accounts)
        ]

    def StreamFills(  # noqa: N802 - the RPC's name
        self,
        request_iterator: Iterator[controller_service_pb2.StreamFillsRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[controller_service_pb2.StreamFillsResponse]:
        """One response per request with one result per fill, like the controller."""
        for request in request_iterator:
            yield controller_service_pb2.StreamFillsResponse(
                batch=controller_service_pb2.FillResults(
                    results=[
                        controller_service_pb2.FillResult(
                            fill_id=fill.fill_id,
                            allocation=allocation_pb2.FillAllocation(
                                fill_id=fill.fill_id,
                                status=allocation_pb2.FILL_STATUS_ALLOCATED,
                                allocations=self._shares[: fill.quantity],
                                split_id="echo",
                                fill=fill,
                            ),
                        )
                        for fill in request.fills
                    ]
                )
            )


def main() -> int:
    """Serve the echo service until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.echo", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port (0 picks a free one)")
    parser.add_argument("--accounts", type=int, default=10, help="entries per allocation")
    args = parser.parse_args()
    configure_logging()
    server, _, port = create_server(f"127.0.0.1:{args.port}", [])
    controller_service_pb2_grpc.add_ControllerServiceServicer_to_server(
        EchoService(args.accounts),  # type: ignore[abstract]  # only StreamFills is measured
        server,
    )
    server.start()
    log.info("listening", extra={"port": port})
    wait_for_signal()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
