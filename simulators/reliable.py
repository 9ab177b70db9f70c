"""A bidi stream that loses nothing: unacknowledged requests are resent after a reconnect.

The controller answers every request of a stream with exactly one response, in order, so the
oldest unacknowledged request is always the one a response belongs to. Requests stay queued
until answered; when the stream breaks, the client reconnects with exponential backoff and
sends every unanswered request again (the controller recognises repeats by id). Before each
(re)connection it waits for the controller's health check to say SERVING, so starting before
the controller, or while it recovers its journal, is quiet and costs no failed stream.
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
        """Stream to ``address`` (over ``tls``) with ``method(channel)``; ``name`` labels log
        lines."""
        self._address = address
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
            with open_channel(self._address, self._tls) as channel:
                if not self._wait_until_serving(channel):
                    return
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

    def _wait_until_serving(self, channel: grpc.Channel) -> bool:
        """Block until the controller's health says SERVING (True) or the stream is cancelled."""
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=CONTROLLER_SERVICE)
        started = time.monotonic()
        logged = False
        last_error = ""
        while not self._cancelled.is_set():
            try:
                answer = health.Check(request, timeout=1.0, wait_for_ready=True)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    if logged:
                        log.info("controller ready", extra={"stream": self._name})
                    return True
            except grpc.RpcError as error:
                # Not reachable yet (wait_for_ready already waited up to the timeout), or
                # refused at the TLS handshake: the log line below says which.
                last_error = f"{error.code().name}: {error.details()}"
            if not logged and time.monotonic() - started > QUIET_WAIT_SECONDS:
                log.info(
                    "waiting for the controller to serve",
                    extra={
                        "stream": self._name,
                        "address": self._address,
                        "last_error": last_error,
                    },
                )
                logged = True
            self._cancelled.wait(0.1)
        return False

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
