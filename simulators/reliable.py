"""A bidi stream that loses nothing: unacknowledged requests are resent after a reconnect.

The controller answers every request of a stream with exactly one response, in order, so the
oldest unacknowledged request is always the one a response belongs to. Requests stay queued
until answered; when the stream breaks, the client reconnects with exponential backoff and
sends every unanswered request again (the controller recognises repeats by id). Before each
(re)connection it waits for the controller's health check to say SERVING, so starting before
the controller, or while it recovers its journal, is quiet and costs no failed stream.

Given several controllers (a leader and standbys on one PostgreSQL journal), it streams to
whichever says SERVING: when the leader dies or steps down the stream breaks, and the unanswered
requests go to the controller that takes over. Keepalive pings notice a leader that stopped
answering (paused, partitioned) within seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.serving import CONTROLLER_SERVICE
from controller.transport import PLAINTEXT, TLSConfig, open_channel

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")

FIRST_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 5.0
# How long the controller may take to serve before the wait is logged.
QUIET_WAIT_SECONDS = 5.0
# A controller that stops answering pings is given up after about two seconds; reconnection
# attempts stay frequent, so a standby that takes over is found within a poll.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

if TYPE_CHECKING:
    # grpc's multicallables are generic only in the type stubs.
    StreamMethod = Callable[[grpc.Channel], grpc.StreamStreamMultiCallable[Request, Response]]


class ReliableStream(Generic[Request, Response]):
    """Queue requests with ``send``; ``run`` keeps a stream open and calls ``on_ack`` per answer."""

    def __init__(
        self,
        address: str,
        method: StreamMethod[Request, Response],
        on_ack: Callable[[Request, Response], None],
        name: str,
        tls: TLSConfig = PLAINTEXT,
    ) -> None:
        """Stream to ``address`` (over ``tls``) with ``method(channel)``: one host:port, or
        several comma-separated (whichever serves is used); ``name`` labels log lines."""
        self._addresses = [part.strip() for part in address.split(",") if part.strip()]
        self._address = self._addresses[0]
        self._tls = tls
        self._method = method
        self._on_ack = on_ack
        self._name = name
        self._changed = threading.Condition()
        self._unacked: deque[Request] = deque()
        self._cursor = 0  # requests of _unacked already sent on the current connection
        self._generation = 0
        self._closing = False  # no more requests will be sent: finish when all are answered
        self._cancelled = threading.Event()
        self._call: grpc.CallIterator[Response] | None = None

    def send(self, request: Request) -> None:
        """Queue a request; it is sent as soon as the stream is up."""
        with self._changed:
            self._unacked.append(request)
            self._changed.notify_all()

    @property
    def unacknowledged(self) -> int:
        """Requests queued or sent but not answered yet."""
        with self._changed:
            return len(self._unacked)

    def wait_for_room(self, limit: int) -> None:
        """Block while ``limit`` or more requests are unanswered (bounds the in-flight window)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._unacked) < limit or self._closing)

    def close(self) -> None:
        """No more requests: ``run`` returns once every queued request is answered."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()

    def cancel(self) -> None:
        """Stop now, dropping unanswered requests (used on SIGINT)."""
        self._cancelled.set()
        with self._changed:
            self._closing = True
            self._changed.notify_all()
            call = self._call
        if call is not None:
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it unannotated

    def run(self) -> None:
        """Keep the stream up until closed and drained, or cancelled."""
        backoff = FIRST_BACKOFF_SECONDS
        in_outage = False
        while not self._cancelled.is_set():
            with self._changed:
                if self._closing and not self._unacked:
                    return
                self._generation += 1
                self._cursor = 0
                generation = self._generation
                self._changed.notify_all()
            channel = self._connect_to_serving()
            if channel is None:
                return
            with channel:
                try:
                    responses = self._method(channel)(self._requests(generation))
                    with self._changed:
                        self._call = responses
                    for response in responses:
                        with self._changed:
                            request = self._unacked.popleft()
                            self._cursor -= 1
                            self._changed.notify_all()
                        self._on_ack(request, response)
                        if in_outage:
                            log.info("stream restored", extra={"stream": self._name})
                            in_outage = False
                        backoff = FIRST_BACKOFF_SECONDS
                    with self._changed:
                        if self._closing and not self._unacked:
                            return
                except grpc.RpcError as error:
                    if self._cancelled.is_set():
                        return
                    if not in_outage:
                        log.warning(
                            "stream broken; reconnecting and resending unacknowledged requests",
                            extra={
                                "stream": self._name,
                                "address": self._address,
                                "code": str(error.code()),
                                "unacknowledged": self.unacknowledged,
                            },
                        )
                        in_outage = True
                finally:
                    with self._changed:
                        self._call = None
            if self._cancelled.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _connect_to_serving(self) -> grpc.Channel | None:
        """A channel to the first controller whose health says SERVING, waiting for one; None
        if the stream is cancelled first."""
        channels = {
            address: open_channel(address, self._tls, CHANNEL_OPTIONS)
            for address in self._addresses
        }
        request = health_pb2.HealthCheckRequest(service=CONTROLLER_SERVICE)
        started = time.monotonic()
        logged = False
        last_error = ""
        try:
            while not self._cancelled.is_set():
                for address, channel in channels.items():
                    try:
                        answer = health_pb2_grpc.HealthStub(channel).Check(
                            request, timeout=1.0, wait_for_ready=len(channels) == 1
                        )
                    except grpc.RpcError as error:
                        # Not reachable (yet), or refused at the TLS handshake: the log line
                        # below says which.
                        last_error = f"{address}: {error.code().name}: {error.details()}"
                        continue
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        if logged or address != self._address:
                            log.info(
                                "controller ready",
                                extra={"stream": self._name, "address": address},
                            )
                        self._address = address
                        return channels.pop(address)
                    last_error = f"{address}: not serving"
                if not logged and time.monotonic() - started > QUIET_WAIT_SECONDS:
                    log.info(
                        "waiting for the controller to serve",
                        extra={
                            "stream": self._name,
                            "address": ",".join(self._addresses),
                            "last_error": last_error,
                        },
                    )
                    logged = True
                self._cancelled.wait(0.1)
            return None
        finally:
            for channel in channels.values():
                channel.close()

    def _requests(self, generation: int) -> Iterator[Request]:
        while True:
            with self._changed:
                self._changed.wait_for(
                    lambda: (
                        self._generation != generation
                        or self._closing
                        or self._cursor < len(self._unacked)
                    )
                )
                if self._generation != generation:
                    return
                if self._cursor >= len(self._unacked):
                    return  # closing and everything queued was sent
                request = self._unacked[self._cursor]
                self._cursor += 1
            yield request
