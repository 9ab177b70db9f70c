"""The README's grpcurl commands, run with the real grpcurl binary against real servers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Pki, RunningController, RunningPositionService, serve_controller

GRPCURL = Path(sys.executable).parent / "grpcurl"
# grpcurl exits with 64 + the gRPC status code on an error status; it prints proto field
# names (split_id, not splitId) and int64 values as strings.
INVALID_ARGUMENT_EXIT = 64 + 3
PERMISSION_DENIED_EXIT = 64 + 7

pytestmark = pytest.mark.skipif(
    not GRPCURL.exists(), reason="grpcurl is installed by the dev extra"
)


def grpcurl(
    port: int, *args: str, data: str | None = None, security: tuple[str, ...] = ("-plaintext",)
) -> subprocess.CompletedProcess[str]:
    command = [str(GRPCURL), *security]
    if data is not None:
        command += ["-d", data]
    command += [f"127.0.0.1:{port}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def test_list_shows_the_services_and_health(
    controller: RunningController, position_service: RunningPositionService
) -> None:
    on_controller = grpcurl(controller.port, "list").stdout.split()
    assert "allocation.v1.ControllerService" in on_controller
    assert "grpc.health.v1.Health" in on_controller
    on_position = grpcurl(position_service.port, "list").stdout.split()
    assert "allocation.v1.PositionService" in on_position
    assert "grpc.health.v1.Health" in on_position


def test_describe_fill(controller: RunningController) -> None:
    described = grpcurl(controller.port, "describe", "allocation.v1.Fill")
    assert described.returncode == 0, described.stderr
    for name in ("fill_id", "ticker", "price", "quantity", "side", "execute_time"):
        assert name in described.stdout


def test_split_fill_positions_and_health_from_json(controller: RunningController) -> None:
    split = grpcurl(
        controller.port,
        "allocation.v1.ControllerService/SetAumSplit",
        data='{"split": {"split_id": "demo-1", "percentages": {"alice": "60", "bob": "40"}}}',
    )
    assert split.returncode == 0, split.stderr
    assert json.loads(split.stdout)["accepted"]["split_id"] == "demo-1"
    submitted = grpcurl(
        controller.port,
        "allocation.v1.ControllerService/SubmitFill",
        data='{"fill": {"fill_id": "X-1", "ticker": "AAPL", "price": "189.25", "quantity": 100,'
        ' "side": "SIDE_BUY"}}',
    )
    assert submitted.returncode == 0, submitted.stderr
    allocation = json.loads(submitted.stdout)["allocation"]
    assert allocation["status"] == "FILL_STATUS_ALLOCATED"
    assert {a["account"]: a["quantity"] for a in allocation["allocations"]} == {
        "alice": "60",
        "bob": "40",
    }
    positions = grpcurl(controller.port, "allocation.v1.ControllerService/GetPositions")
    assert positions.returncode == 0, positions.stderr
    report = json.loads(positions.stdout)["report"]
    assert report["total_value"] == "18925"
    health = grpcurl(controller.port, "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout)["status"] == "SERVING"


def test_bad_fill_exits_with_invalid_argument(controller: RunningController) -> None:
    bad = grpcurl(
        controller.port,
        "allocation.v1.ControllerService/SubmitFill",
        data='{"fill": {"fill_id": "X-2", "ticker": "AAPL", "price": "-3", "quantity": 100,'
        ' "side": "SIDE_BUY"}}',
    )
    assert bad.returncode == INVALID_ARGUMENT_EXIT
    assert "InvalidArgument" in bad.stderr
    assert "fill.price '-3'" in bad.stderr


def grpcurl_tls(
    port: int, pki: Pki, certificate: str | None, *args: str, data: str | None = None
) -> subprocess.CompletedProcess[str]:
    """grpcurl over TLS, verifying the server with the test CA, presenting ``certificate``."""
    security = ["-cacert", str(pki.ca)]
    if certificate is not None:
        tls = pki.tls(certificate)
        security += ["-cert", str(tls.cert), "-key", str(tls.key)]
    return grpcurl(port, *args, data=data, security=tuple(security))


def test_grpcurl_with_a_client_certificate_against_a_mutual_tls_controller(
    pki: Pki, tmp_path: Path
) -> None:
    with serve_controller(tmp_path, pki.tls("controller"), pki.policy) as (_, port, sequencer):
        listed = grpcurl_tls(port, pki, "reader", "list")
        assert listed.returncode == 0, listed.stderr
        assert "allocation.v1.ControllerService" in listed.stdout.split()
        positions = grpcurl_tls(port, pki, "reader", "allocation.v1.ControllerService/GetPositions")
        assert positions.returncode == 0, positions.stderr
        assert json.loads(positions.stdout)["report"]["total_value"] == "0"
        # Without a client certificate the handshake fails; with the wrong role the call does.
        anonymous = grpcurl_tls(port, pki, None, "list")
        assert anonymous.returncode != 0
        denied = grpcurl_tls(
            port,
            pki,
            "reader",
            "allocation.v1.ControllerService/SubmitFill",
            data='{"fill": {"fill_id": "reader/1", "ticker": "AAPL", "price": "1",'
            ' "quantity": 1, "side": "SIDE_BUY"}}',
        )
        assert denied.returncode == PERMISSION_DENIED_EXIT
        assert "identity 'reader' may not call" in denied.stderr
        assert sequencer.lookup("reader/1") is None
