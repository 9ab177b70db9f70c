"""gRPC server plumbing shared by the controller and the position service.

Health and reflection on, a port clash fails loudly, SIGTERM/SIGINT drain in-flight calls, and
log lines are structured (one JSON object per line).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterable
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from allocation.v1 import controller_service_pb2, position_service_pb2
from controller.authorization import AuthorizationInterceptor, AuthPolicy, PolicyError
from controller.transport import (
    PLAINTEXT,
    TLSConfig,
    add_port,
    add_server_arguments,
    check_server,
    server_config,
)

# The services' full names: what health reports on, and the domain of their ErrorInfo.
CONTROLLER_SERVICE = controller_service_pb2.DESCRIPTOR.services_by_name[
    "ControllerService"
].full_name
POSITION_SERVICE = position_service_pb2.DESCRIPTOR.services_by_name["PositionService"].full_name
log = logging.getLogger(__name__)

# Threads beyond the open streams' (each holds one), so health checks and unary calls are
# answered however many streams are open.
UNARY_WORKERS = 32
DEFAULT_WORKERS = 64
# A second server on the same port must fail, not silently share it (SO_REUSEPORT is on by
# default in gRPC).
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    # Clients ping every second to notice a controller that stopped answering (the simulators'
    # failover): accept that instead of answering GOAWAY "too many pings".
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    _STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            (key, value) for key, value in record.__dict__.items() if key not in self._STANDARD
        )
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send structured log lines to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)


def create_server(
    address: str,
    service_names: Iterable[str],
    workers: int = DEFAULT_WORKERS,
    tls: TLSConfig = PLAINTEXT,
    policy: AuthPolicy | None = None,
) -> tuple[grpc.Server, health.HealthServicer, int]:
    """A server with health (NOT_SERVING until the caller says so) and reflection, bound to
    ``address`` (port 0 picks a free port) with ``tls``; with a ``policy`` every call but
    health and reflection needs a role. Returns the server, its health servicer and port."""
    interceptors: list[grpc.ServerInterceptor[Any, Any]] = (
        [] if policy is None else [AuthorizationInterceptor(policy)]
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        interceptors=interceptors,
        options=SERVER_OPTIONS,
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    set_not_serving(health_servicer, names)
    return server, health_servicer, add_port(server, address, tls)


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's TLS options, ``--auth-policy`` and ``--metrics-host``."""
    add_server_arguments(parser)
    parser.add_argument(
        "--auth-policy",
        type=Path,
        default=None,
        help="TOML file mapping client identities to roles (see the README's Security); needs"
        " --tls-client-ca. Without it every client the CA signed may call every method",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the Prometheus endpoint (0.0.0.0 exposes it to the network)",
    )


def server_security(args: argparse.Namespace) -> tuple[TLSConfig, AuthPolicy | None]:
    """The server's TLS configuration and authorization policy from its options, checked
    (``TLSError`` or ``PolicyError`` with a one-line reason); warnings are logged."""
    tls = server_config(args)
    identity = check_server(args.host, tls, args.insecure)
    if args.auth_policy is not None and tls.ca is None:
        raise PolicyError("--auth-policy needs mutual TLS: give --tls-client-ca as well")
    policy = None if args.auth_policy is None else AuthPolicy.load(args.auth_policy)
    if tls.mutual and policy is None:
        log.warning(
            "mutual TLS without --auth-policy: every client certificate the CA signed may call"
            " every method"
        )
    if tls.enabled:
        log.info(
            "transport security",
            extra={
                "identity": identity,
                "mutual_tls": tls.mutual,
                "authorization": policy is not None,
            },
        )
    return tls, policy


def set_serving(health_servicer: health.HealthServicer, service_names: Iterable[str]) -> None:
    """Report SERVING for the server and each named service."""
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


def set_not_serving(health_servicer: health.HealthServicer, service_names: Iterable[str]) -> None:
    """Report NOT_SERVING for the server and each named service."""
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


def stop_on_signals(stop: threading.Event) -> list[int]:
    """Make SIGTERM and SIGINT set ``stop``; the returned list collects the signals received."""
    received: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return received


def wait_for_signal(stop: threading.Event | None = None) -> int | None:
    """Block until SIGTERM or SIGINT (returns the signal number) or until ``stop`` is set by
    someone else (returns None)."""
    done = stop if stop is not None else threading.Event()
    received = stop_on_signals(done)
    # A timed wait: the handler always gets a chance to run promptly on the main thread.
    while not done.wait(0.5):
        pass
    return received[0] if received else None


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 to 65535 (0 picks a free one)."""
    port = int(text)
    if not 0 <= port <= 65_535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0 to 65535)")
    return port


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds > 0")
    return value


def non_negative_seconds(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds >= 0")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
