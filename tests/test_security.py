"""Transport security and authorization: real TLS handshakes against real servers on
127.0.0.1 port 0, with certificates made for the test by a throwaway CA."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from allocation.v1 import (
    allocation_pb2,
    controller_service_pb2,
    controller_service_pb2_grpc,
    position_service_pb2,
    position_service_pb2_grpc,
)
from controller.authorization import AuthPolicy, PolicyError
from controller.devcerts import CertificateAuthority
from controller.metrics import DENIED_CALLS
from controller.sequencer import Sequencer
from controller.transport import TLSConfig, TLSError, check_files, check_server, open_channel
from tests.conftest import (
    ROOT,
    Pki,
    Program,
    fill,
    serve_controller,
    serve_position,
    split_request,
    start_program,
)

CONTROLLER = "/allocation.v1.ControllerService"
POSITION = "/allocation.v1.PositionService"
# Who sees a handshake refused: the channel never connects, the call fails at once.
REFUSED_AT_HANDSHAKE = "failed to connect to all addresses"


@dataclass
class SecureSystem:
    """A controller and a position service, both with mutual TLS and the policy."""

    pki: Pki
    controller_port: int
    position_port: int
    sequencer: Sequencer


@pytest.fixture
def secure(pki: Pki, tmp_path: Path) -> Iterator[SecureSystem]:
    with (
        serve_controller(tmp_path, pki.tls("controller"), pki.policy) as (_, port, sequencer),
        serve_position(tmp_path, pki.tls("position"), pki.policy) as (position_port, _, _),
    ):
        yield SecureSystem(pki, port, position_port, sequencer)


def controller_stub(
    system: SecureSystem, tls: TLSConfig
) -> tuple[grpc.Channel, controller_service_pb2_grpc.ControllerServiceStub]:
    channel = open_channel(f"127.0.0.1:{system.controller_port}", tls)
    return channel, controller_service_pb2_grpc.ControllerServiceStub(channel)


def positions_of(system: SecureSystem) -> allocation_pb2.PositionReport:
    """The controller's positions as the admin sees them (generation time cleared)."""
    channel, stub = controller_stub(system, system.pki.tls("admin"))
    with channel:
        report = stub.GetPositions(controller_service_pb2.GetPositionsRequest()).report
    report.ClearField("generate_time")
    return report


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def split_as_aum(system: SecureSystem, percents: dict[str, str]) -> None:
    """Put a split in force with the AUM server's certificate."""
    channel, aum = controller_stub(system, system.pki.tls("aum"))
    with channel:
        aum.SetAumSplit(split_request(percents, "s-1"))


def test_valid_roles_work_end_to_end(secure: SecureSystem) -> None:
    """The allowed paths: aum sets a split, a venue submits its own fill, a reader reads."""
    pki = secure.pki
    split_as_aum(secure, {"a": "60", "b": "40"})
    channel, venue = controller_stub(secure, pki.tls("venue-1"))
    with channel:
        allocated = venue.SubmitFill(
            controller_service_pb2.SubmitFillRequest(fill=fill("venue-1/f-1"))
        )
    assert allocated.HasField("allocation")
    channel, reader = controller_stub(secure, pki.tls("reader"))
    with channel:
        found = reader.GetFillAllocation(
            controller_service_pb2.GetFillAllocationRequest(fill_id="venue-1/f-1")
        )
    assert {a.account: a.quantity for a in found.allocation.allocations} == {"a": 60, "b": 40}


# What each denied caller tries: (certificate, method, the call on a stub).
def _set_split(stub: controller_service_pb2_grpc.ControllerServiceStub) -> object:
    return stub.SetAumSplit(split_request({"x": "100"}, "denied-split"), timeout=10)


def _stream_fill(stub: controller_service_pb2_grpc.ControllerServiceStub) -> object:
    request = controller_service_pb2.StreamFillsRequest(fills=[fill("aum/denied-fill")])
    return list(stub.StreamFills(iter([request]), timeout=10))


def _submit_fill(stub: controller_service_pb2_grpc.ControllerServiceStub) -> object:
    request = controller_service_pb2.SubmitFillRequest(fill=fill("reader/denied-fill"))
    return stub.SubmitFill(request, timeout=10)


def _get_positions(stub: controller_service_pb2_grpc.ControllerServiceStub) -> object:
    return stub.GetPositions(controller_service_pb2.GetPositionsRequest(), timeout=10)


REFUSED_AT_HANDSHAKE_CASES = {
    "no client certificate": None,
    "certificate from another CA": "foreign",
    "expired certificate": "expired",
}


@pytest.mark.parametrize(
    "certificate", REFUSED_AT_HANDSHAKE_CASES.values(), ids=list(REFUSED_AT_HANDSHAKE_CASES)
)
def test_handshake_refuses_and_the_server_keeps_serving(
    secure: SecureSystem, certificate: str | None
) -> None:
    before = positions_of(secure)
    tls = TLSConfig(ca=secure.pki.ca) if certificate is None else secure.pki.tls(certificate)
    channel, stub = controller_stub(secure, tls)
    with channel, pytest.raises(grpc.RpcError) as raised:
        stub.SetAumSplit(split_request({"x": "100"}, "refused"), timeout=10)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert REFUSED_AT_HANDSHAKE in (raised.value.details() or "")
    # Nothing changed, and a valid client is still served.
    assert positions_of(secure) == before
    assert secure.sequencer.counters.next_sequence == 1


DENIED_CASES = {
    "identity not in the policy": ("stranger", "GetPositions", _get_positions),
    "venue calls SetAumSplit": ("venue-1", "SetAumSplit", _set_split),
    "AUM server calls StreamFills": ("aum", "StreamFills", _stream_fill),
    "reader submits a fill": ("reader", "SubmitFill", _submit_fill),
}


@pytest.mark.parametrize(
    ("identity", "method", "call"), DENIED_CASES.values(), ids=list(DENIED_CASES)
)
def test_a_call_without_the_role_is_denied_logged_and_counted(
    secure: SecureSystem,
    identity: str,
    method: str,
    call: Callable[[controller_service_pb2_grpc.ControllerServiceStub], object],
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = positions_of(secure)
    full_method = f"{CONTROLLER}/{method}"
    counted = DENIED_CALLS.labels(identity, full_method)._value.get()
    channel, stub = controller_stub(secure, secure.pki.tls(identity))
    with (
        caplog.at_level(logging.WARNING, "controller.authorization"),
        channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        call(stub)
    error = raised.value
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert f"identity {identity!r} may not call {full_method}" in (error.details() or "")
    info = error_info(error)
    assert info.reason == "REJECTION_REASON_PERMISSION_DENIED"
    assert info.domain == "allocation.v1.ControllerService"
    denials = [r for r in caplog.records if r.getMessage() == "call denied"]
    assert [(r.identity, r.method) for r in denials] == [(identity, full_method)]  # type: ignore[attr-defined]
    assert DENIED_CALLS.labels(identity, full_method)._value.get() == counted + 1
    # The denied message changed nothing.
    assert positions_of(secure) == before
    assert secure.sequencer.counters.next_sequence == 1
    for fill_id in ("aum/denied-fill", "reader/denied-fill"):
        assert secure.sequencer.lookup(fill_id) is None


def test_unknown_identity_may_not_report_positions(secure: SecureSystem) -> None:
    header = allocation_pb2.PositionReport(journal_id="j", sequence=1, total_value="0")
    part = position_service_pb2.ReportPositionsRequest(report=header, account_count=0)
    with open_channel(f"127.0.0.1:{secure.position_port}", secure.pki.tls("stranger")) as channel:
        stub = position_service_pb2_grpc.PositionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ReportPositions(iter([part]), timeout=10)
        assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert f"identity 'stranger' may not call {POSITION}/ReportPositions" in (
            raised.value.details() or ""
        )
    # Nothing was stored: the reader finds no report.
    with open_channel(f"127.0.0.1:{secure.position_port}", secure.pki.tls("reader")) as channel:
        stub = position_service_pb2_grpc.PositionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as absent:
            stub.GetLatestReport(position_service_pb2.GetLatestReportRequest(), timeout=10)
    assert absent.value.code() is grpc.StatusCode.NOT_FOUND


def test_health_is_open_to_any_authenticated_peer(secure: SecureSystem) -> None:
    with open_channel(f"127.0.0.1:{secure.controller_port}", secure.pki.tls("stranger")) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_a_venue_may_use_only_its_own_fill_ids(secure: SecureSystem) -> None:
    pki = secure.pki
    split_as_aum(secure, {"a": "50", "b": "50"})
    channel, venue = controller_stub(secure, pki.tls("venue-1"))
    with channel:
        with pytest.raises(grpc.RpcError) as raised:
            venue.SubmitFill(controller_service_pb2.SubmitFillRequest(fill=fill("venue-2/x")))
        assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "fill.fill_id 'venue-2/x' is not one of 'venue-1''s fill ids" in (
            raised.value.details() or ""
        )
        # In a batch the foreign id is refused in-band; the venue's own one is allocated.
        request = controller_service_pb2.StreamFillsRequest(
            fills=[fill("venue-1/ok"), fill("venue-2/y")]
        )
        (response,) = venue.StreamFills(iter([request]), timeout=10)
    ok, foreign = response.batch.results
    assert ok.HasField("allocation")
    assert foreign.rejection.reason == allocation_pb2.REJECTION_REASON_PERMISSION_DENIED
    assert foreign.rejection.field == "fills[1].fill_id"
    assert secure.sequencer.lookup("venue-2/x") is None
    assert secure.sequencer.lookup("venue-2/y") is None


def test_plaintext_client_fails_cleanly_against_a_tls_server(secure: SecureSystem) -> None:
    channel, stub = controller_stub(secure, TLSConfig())
    with channel, pytest.raises(grpc.RpcError) as raised:
        _get_positions(stub)
    # Refused, not left hanging until the deadline.
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    positions_of(secure)  # others are still served


def test_server_reloads_rotated_certificate_files(pki: Pki, tmp_path: Path) -> None:
    """New files (from a new CA) are used at the next handshake, without a restart."""
    served = tmp_path / "served"
    served.mkdir()
    for suffix in ("pem", "key"):
        (served / f"controller.{suffix}").write_bytes(
            (pki.directory / f"controller.{suffix}").read_bytes()
        )
    tls = TLSConfig(served / "controller.pem", served / "controller.key", pki.ca)
    with serve_controller(tmp_path, tls) as (_server, port, _sequencer):
        address = f"127.0.0.1:{port}"
        with open_channel(address, pki.tls("reader")) as channel:
            _get_positions(controller_service_pb2_grpc.ControllerServiceStub(channel))
        rotated = CertificateAuthority("rotated CA")
        rotated.issue("controller", server=True).write(served, "controller")
        (tmp_path / "rotated-ca.pem").write_bytes(rotated.pem)
        trusting_new = TLSConfig(
            pki.tls("reader").cert, pki.tls("reader").key, tmp_path / "rotated-ca.pem"
        )
        with open_channel(address, trusting_new) as channel:
            _get_positions(controller_service_pb2_grpc.ControllerServiceStub(channel))
        with (
            open_channel(address, pki.tls("reader")) as channel,
            pytest.raises(grpc.RpcError) as raised,
        ):
            _get_positions(controller_service_pb2_grpc.ControllerServiceStub(channel))
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE


def test_certificate_checks_at_start(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "controller.transport"):
        assert check_files(pki.tls("expiring")) == "venue-1"
    (warning,) = [r for r in caplog.records if r.getMessage() == "certificate expires soon"]
    assert warning.identity == "venue-1"  # type: ignore[attr-defined]
    with pytest.raises(TLSError, match=r"--tls-cert .*expired\.pem expired on"):
        check_files(pki.tls("expired"))
    mismatched = TLSConfig(pki.tls("reader").cert, pki.tls("aum").key, pki.ca)
    with pytest.raises(TLSError, match="is not the key of --tls-cert"):
        check_files(mismatched)


def test_plaintext_off_loopback_needs_insecure() -> None:
    plaintext = TLSConfig()
    with pytest.raises(TLSError, match="add --insecure"):
        check_server("0.0.0.0", plaintext, insecure=False)
    assert check_server("0.0.0.0", plaintext, insecure=True) == ""
    assert check_server("127.0.0.1", plaintext, insecure=False) == ""
    assert check_server("::1", plaintext, insecure=False) == ""


def run_program(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m <args>`` from the repository root, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("program", ["controller", "position"])
def test_programs_refuse_plaintext_on_a_non_loopback_address(program: str, tmp_path: Path) -> None:
    journal = [f"--db={tmp_path / 'j.db'}"] if program == "controller" else []
    run = run_program(program, "--host=0.0.0.0", "--port=0", *journal)
    assert run.returncode == 2
    (line,) = [line for line in run.stderr.splitlines() if "refusing" in line]
    assert "0.0.0.0" in line and "--tls-cert" in line and "--insecure" in line
    assert not (tmp_path / "j.db").exists()


def test_policy_file_errors_name_the_entry(tmp_path: Path) -> None:
    def load(text: str) -> AuthPolicy:
        path = tmp_path / "policy.toml"
        path.write_text(text)
        return AuthPolicy.load(path)

    with pytest.raises(PolicyError, match="unknown table\\(s\\) \\['roles'\\]"):
        load("[roles]\n")
    with pytest.raises(PolicyError, match="an \\[identities\\] table"):
        load("")
    with pytest.raises(PolicyError, match="unknown role\\(s\\) \\['trader'\\]"):
        load('[identities]\n"a" = ["trader"]\n')
    with pytest.raises(PolicyError, match="could collide"):
        load('[identities]\n"a" = ["venue"]\n"b" = ["venue"]\n[fill_id_prefixes]\n"b" = "a/x"\n')
    policy = load('[identities]\n"a" = ["venue", "reader"]\n"ops" = ["admin"]\n')
    assert policy.allows("a", f"{CONTROLLER}/SubmitFill")
    assert policy.allows("a", f"{CONTROLLER}/GetPositions")
    assert not policy.allows("a", f"{CONTROLLER}/SetAumSplit")
    assert policy.allows("ops", f"{POSITION}/ReportPositions")
    assert policy.allows("nobody", "/grpc.health.v1.Health/Check")
    assert policy.fill_id_scope("ops") is None


def test_every_rpc_belongs_to_a_role() -> None:
    """A new RPC must be given a role on purpose: otherwise only admin could call it."""
    from controller.authorization import ROLE_METHODS

    granted = set().union(*ROLE_METHODS.values())
    for module in (controller_service_pb2, position_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert f"/{service.full_name}/{method.name}" in granted


def tls_options(pki: Pki, name: str, prefix: str = "", server: bool = False) -> list[str]:
    """Command-line TLS options presenting ``name``'s certificate."""
    ca = "tls-client-ca" if server else f"{prefix}tls-ca"
    return [
        f"--{prefix}tls-cert={pki.directory / f'{name}.pem'}",
        f"--{prefix}tls-key={pki.directory / f'{name}.key'}",
        f"--{ca}={pki.ca}",
    ]


def test_whole_system_runs_with_mutual_tls_end_to_end(
    pki: Pki, tmp_path: Path, programs: list[Program]
) -> None:
    policy = f"--auth-policy={pki.directory / 'policy.toml'}"
    position = start_program(
        "position",
        "--port=0",
        f"--history={tmp_path / 'history.db'}",
        policy,
        *tls_options(pki, "position", server=True),
    )
    programs.append(position)
    controller = start_program(
        "controller",
        "--port=0",
        f"--db={tmp_path / 'controller.db'}",
        "--report-interval=0.5",
        f"--position-address=localhost:{position.wait_listening()}",
        policy,
        *tls_options(pki, "controller", server=True),
        *tls_options(pki, "controller", prefix="position-"),
    )
    programs.append(controller)
    address = f"localhost:{controller.wait_listening()}"
    aum = start_program(
        "simulators",
        "aum",
        f"--controller={address}",
        "--accounts=4",
        "--seed=1",
        *tls_options(pki, "aum"),
    )
    programs.append(aum)
    fills = start_program(
        "simulators",
        "fills",
        f"--controller={address}",
        "--rate=40",
        "--count=20",
        "--seed=2",
        *tls_options(pki, "venue-1"),
    )
    programs.append(fills)
    finished = fills.wait_for("finished", timeout=60)
    assert fills.process.wait(10) == 0
    # Fills that arrive before the first split wait as pending; none is refused.
    assert finished["rejected"] == 0
    assert finished["allocated"] + finished["pending"] == 20  # type: ignore[operator]
    # Reports reach the position service over mutual TLS, from the "controller" identity.
    report = position.wait_for_entry(
        "report accepted",
        lambda e: e.get("fill_count") == 20 and e.get("accounts") == 4,
        timeout=60,
    )
    assert report["split_id"]
    for program in (aum, controller, position):
        assert program.stop() == 0
    assert not [e for p in programs for e in p.entries if e.get("message") == "call denied"]


def test_auth_policy_needs_mutual_tls(pki: Pki, tmp_path: Path) -> None:
    run = run_program(
        "controller",
        "--port=0",
        f"--db={tmp_path / 'j.db'}",
        f"--auth-policy={pki.directory / 'policy.toml'}",
    )
    assert run.returncode == 2
    assert "--auth-policy needs mutual TLS: give --tls-client-ca" in run.stderr
