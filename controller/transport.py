"""Every gRPC server port and client channel of the system, built from one ``TLSConfig``.

A server with ``--tls-cert``/``--tls-key`` speaks TLS; with ``--tls-client-ca`` as well it
requires a client certificate signed by that CA (mutual TLS), so a client without one, with
one from another CA, or an expired one, is refused at the handshake. A client with ``--tls-ca``
(and ``--tls-cert``/``--tls-key`` for mutual TLS) verifies the server against that CA. Without
any of them a link is plaintext, which a server accepts only on a loopback address unless
``--insecure`` says otherwise.

A server re-reads its certificate files when they change (checked at each new connection), so
certificates are rotated without a restart; a certificate that expires within
``EXPIRY_WARNING_DAYS`` is logged at start.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import ipaddress
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

EXPIRY_WARNING_DAYS = 14


class TLSError(ValueError):
    """TLS settings or files that cannot be used; the message names the option or file."""


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """The PEM files of one end of a link (paths, so a server can reload them).

    On a server ``ca`` is the CA of client certificates (mutual TLS when set); on a client it
    is the CA that signed the server's certificate. ``server_name`` (clients only) is the name
    to verify in the server's certificate instead of the host of the address.
    """

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    server_name: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether the link uses TLS at all."""
        return self.cert is not None or self.ca is not None

    @property
    def mutual(self) -> bool:
        """Whether both ends present a certificate."""
        return self.cert is not None and self.ca is not None


PLAINTEXT = TLSConfig()


def _read(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TLSError(f"{option} {path}: {error.strerror or error}") from error


def load_certificate(path: Path, option: str = "certificate") -> x509.Certificate:
    """The first certificate in a PEM file; ``TLSError`` naming ``option`` if there is none."""
    try:
        return x509.load_pem_x509_certificate(_read(path, option))
    except ValueError as error:
        raise TLSError(f"{option} {path} holds no PEM certificate: {error}") from error


def certificate_identity(certificate: x509.Certificate) -> str:
    """The identity a certificate proves: its first DNS subject alternative name, else its
    common name, else the empty string."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns = names.value.get_values_for_type(x509.DNSName)
        if dns:
            return dns[0]
    except x509.ExtensionNotFound:
        pass
    common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else ""


@functools.lru_cache(maxsize=4096)
def pem_identity(pem: bytes) -> str:
    """``certificate_identity`` of a PEM certificate (cached: every call of a peer asks)."""
    return certificate_identity(x509.load_pem_x509_certificate(pem))


def check_files(tls: TLSConfig, prefix: str = "--", ca_option: str = "tls-ca") -> str:
    """Check that the files load, that the key belongs to the certificate and that the
    certificate has not expired, and log a warning for one that expires within
    ``EXPIRY_WARNING_DAYS``. Returns the identity of the own certificate ("" without one).
    ``prefix`` and ``ca_option`` make the option names in messages."""
    if (tls.cert is None) != (tls.key is None):
        raise TLSError(f"{prefix}tls-cert and {prefix}tls-key must be given together")
    if tls.ca is not None:
        load_certificate(tls.ca, f"{prefix}{ca_option}")
    if tls.cert is None or tls.key is None:
        return ""
    certificate = load_certificate(tls.cert, f"{prefix}tls-cert")
    try:
        key = serialization.load_pem_private_key(_read(tls.key, f"{prefix}tls-key"), None)
    except (ValueError, TypeError) as error:
        raise TLSError(f"{prefix}tls-key {tls.key} holds no usable private key: {error}") from error
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != certificate.public_key().public_bytes(
        encoding, public
    ):
        raise TLSError(f"{prefix}tls-key {tls.key} is not the key of {prefix}tls-cert {tls.cert}")
    identity = certificate_identity(certificate)
    left = certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if left.total_seconds() <= 0:
        raise TLSError(
            f"{prefix}tls-cert {tls.cert} expired on {certificate.not_valid_after_utc:%Y-%m-%d}"
        )
    if left < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        log.warning(
            "certificate expires soon",
            extra={
                "certificate": str(tls.cert),
                "identity": identity,
                "not_after": certificate.not_valid_after_utc.isoformat(),
                "days_left": round(left.total_seconds() / 86_400, 1),
            },
        )
    return identity


class _ReloadingCredentials:
    """Server certificate files re-read when one of them changes, at the next handshake."""

    def __init__(self, tls: TLSConfig) -> None:
        self._tls = tls
        self._paths = [p for p in (tls.cert, tls.key, tls.ca) if p is not None]
        self._lock = threading.Lock()
        self._stamps = self._stat()

    def _stat(self) -> list[tuple[int, int]]:
        stamps = []
        for path in self._paths:
            try:
                status = os.stat(path)
                stamps.append((status.st_mtime_ns, status.st_size))
            except OSError:
                stamps.append((0, 0))
        return stamps

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        """The certificate configuration from the files as they are now."""
        assert self._tls.cert is not None and self._tls.key is not None
        return grpc.ssl_server_certificate_configuration(
            [(_read(self._tls.key, "--tls-key"), _read(self._tls.cert, "--tls-cert"))],
            root_certificates=None if self._tls.ca is None else _read(self._tls.ca, "--tls-ca"),
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's per-handshake hook: a new configuration when the files changed, else None."""
        with self._lock:
            stamps = self._stat()
            if stamps == self._stamps:
                return None
            try:
                check_files(self._tls, ca_option="tls-client-ca")
                configuration = self.configuration()
            except TLSError as error:
                # Half-written files during a rotation: keep serving with the loaded ones.
                log.warning(
                    "certificate files changed but cannot be loaded", extra={"error": str(error)}
                )
                return None
            self._stamps = stamps
            log.info("certificates reloaded", extra={"certificate": str(self._tls.cert)})
            return configuration


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    """TLS server credentials that follow changes to the files; client certificates are
    required when ``tls.ca`` is set."""
    files = _ReloadingCredentials(tls)
    return grpc.dynamic_ssl_server_credentials(
        files.configuration(),
        files.fetch,  # type: ignore[arg-type]  # grpc-stubs omits that None means "no change"
        require_client_authentication=tls.ca is not None,
    )


def add_port(server: grpc.Server, address: str, tls: TLSConfig = PLAINTEXT) -> int:
    """Bind ``server`` to ``address`` with TLS when configured; the port bound (OSError when
    it cannot listen)."""
    if tls.enabled:
        port = server.add_secure_port(address, server_credentials(tls))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port


def channel_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    """Client credentials: the CA to verify the server with (system roots when unset) and the
    client certificate for mutual TLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=None if tls.ca is None else _read(tls.ca, "--tls-ca"),
        private_key=None if tls.key is None else _read(tls.key, "--tls-key"),
        certificate_chain=None if tls.cert is None else _read(tls.cert, "--tls-cert"),
    )


def open_channel(
    address: str,
    tls: TLSConfig = PLAINTEXT,
    options: Sequence[tuple[str, str | int]] = (),
) -> grpc.Channel:
    """A channel to ``address``: TLS when ``tls`` is enabled, plaintext otherwise."""
    if not tls.enabled:
        return grpc.insecure_channel(address, options=list(options))
    extra = [] if tls.server_name is None else [("grpc.ssl_target_name_override", tls.server_name)]
    return grpc.secure_channel(address, channel_credentials(tls), options=[*options, *extra])


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listen address) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_server(host: str, tls: TLSConfig, insecure: bool) -> str:
    """Check a server's settings before it starts: ``TLSError`` with a one-line reason for
    plaintext off loopback without ``--insecure``, or for unusable files. Returns the identity
    of the server's certificate ("" without TLS)."""
    if tls.ca is not None and tls.cert is None:
        raise TLSError("--tls-client-ca needs --tls-cert and --tls-key")
    if not (tls.enabled or insecure or is_loopback(host)):
        raise TLSError(
            f"refusing to serve plaintext on {host}, which is not a loopback address: give"
            " --tls-cert and --tls-key (and --tls-client-ca for mutual TLS), or add --insecure"
        )
    return check_files(tls, ca_option="tls-client-ca")


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tls-cert``, ``--tls-key``, ``--tls-client-ca`` and ``--insecure``."""
    group = parser.add_argument_group("transport security (server)")
    group.add_argument("--tls-cert", type=Path, default=None, help="server certificate (PEM)")
    group.add_argument("--tls-key", type=Path, default=None, help="its private key (PEM)")
    group.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        help="CA bundle (PEM) of client certificates: when given, every client must present a"
        " certificate it signed (mutual TLS)",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext on a non-loopback --host (otherwise refused)",
    )


def add_client_arguments(
    parser: argparse.ArgumentParser, prefix: str = "", peer: str = "the server"
) -> None:
    """``--{prefix}tls-ca``, ``--{prefix}tls-cert``, ``--{prefix}tls-key`` and
    ``--{prefix}tls-server-name`` for a link to ``peer``."""
    group = parser.add_argument_group(f"transport security (link to {peer})")
    group.add_argument(
        f"--{prefix}tls-ca",
        type=Path,
        default=None,
        help=f"CA (PEM) that signed {peer}'s certificate; TLS is on when this or"
        f" --{prefix}tls-cert is given",
    )
    group.add_argument(
        f"--{prefix}tls-cert", type=Path, default=None, help="client certificate (PEM)"
    )
    group.add_argument(f"--{prefix}tls-key", type=Path, default=None, help="its key (PEM)")
    group.add_argument(
        f"--{prefix}tls-server-name",
        default=None,
        help=f"name to verify in {peer}'s certificate instead of the address's host",
    )


def server_config(args: argparse.Namespace) -> TLSConfig:
    """The server's TLS configuration from the options ``add_server_arguments`` added."""
    return TLSConfig(args.tls_cert, args.tls_key, args.tls_client_ca)


def client_config(args: argparse.Namespace, prefix: str = "") -> TLSConfig:
    """A client link's TLS configuration from the options ``add_client_arguments`` added."""
    attribute = prefix.replace("-", "_")
    return TLSConfig(
        getattr(args, f"{attribute}tls_cert"),
        getattr(args, f"{attribute}tls_key"),
        getattr(args, f"{attribute}tls_ca"),
        getattr(args, f"{attribute}tls_server_name"),
    )
