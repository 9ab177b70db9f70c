"""``python -m controller.devcerts DIR``: a throwaway CA, certificates and a policy for
development (``make certs``); never for production.

Writes ``ca.pem`` and, for each identity, ``NAME.pem`` (certificate) and ``NAME.key`` (its
private key, mode 0600): ``controller`` and ``position`` (servers, valid for ``localhost`` and
``127.0.0.1``; the controller's also authenticates it to the position service), ``venue-1``
and ``venue-2``, ``aum``, ``reader``, ``compliance`` and ``admin`` (clients).
``policy.toml`` gives each its role. Keys are EC P-256; the CA's key is not kept.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DAYS = 30
LOCAL_NAMES = ("localhost",)
LOCAL_ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key, PEM-encoded."""

    cert: bytes
    key: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write ``NAME.pem`` and ``NAME.key`` (0600); returns their paths."""
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(self.cert)
        key_path.touch(mode=0o600)
        key_path.chmod(0o600)
        key_path.write_bytes(self.key)
        return cert_path, key_path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fill-allocator development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class CertificateAuthority:
    """A self-signed CA that issues leaf certificates."""

    def __init__(self, name: str = "fill-allocator development CA", days: int = DEFAULT_DAYS):
        """A new CA valid for ``days`` days from now."""
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = _name(name)
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        """The CA certificate, PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        identity: str,
        *,
        server: bool = False,
        client: bool = True,
        days: float = DEFAULT_DAYS,
        starts: datetime.datetime | None = None,
    ) -> Issued:
        """A certificate whose identity (first DNS name and common name) is ``identity``;
        ``server`` adds ``localhost`` and the loopback addresses and the server usage."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = starts or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        names: list[x509.GeneralName] = [x509.DNSName(identity)]
        usages = []
        if server:
            names += [x509.DNSName(n) for n in LOCAL_NAMES if n != identity]
            names += [x509.IPAddress(ipaddress.ip_address(a)) for a in LOCAL_ADDRESSES]
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(identity))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return Issued(
            certificate.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


# identity -> (roles, is a server)
DEVELOPMENT_IDENTITIES: dict[str, tuple[tuple[str, ...], bool]] = {
    "controller": (("controller",), True),
    "position": ((), True),
    "venue-1": (("venue",), False),
    "venue-2": (("venue",), False),
    "aum": (("aum",), False),
    "reader": (("reader",), False),
    "compliance": (("compliance",), False),
    "admin": (("admin",), False),
}


def policy_text(identities: dict[str, tuple[tuple[str, ...], bool]]) -> str:
    """An ``--auth-policy`` file giving each identity its roles."""
    lines = [
        "# Development policy: verified certificate identity -> roles (see the README's Security).",
        "[identities]",
    ]
    lines += [
        f"{json.dumps(identity)} = {json.dumps(list(roles))}"
        for identity, (roles, _server) in identities.items()
        if roles
    ]
    return "\n".join(lines) + "\n"


def write_development_certificates(directory: Path, days: int = DEFAULT_DAYS) -> None:
    """The CA, every development identity's certificate and key, and ``policy.toml``."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = CertificateAuthority(days=days)
    (directory / "ca.pem").write_bytes(authority.pem)
    for identity, (_roles, server) in DEVELOPMENT_IDENTITIES.items():
        authority.issue(identity, server=server, days=days).write(directory, identity)
    (directory / "policy.toml").write_text(policy_text(DEVELOPMENT_IDENTITIES))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m controller.devcerts``."""
    parser = argparse.ArgumentParser(
        prog="python -m controller.devcerts",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("directory", type=Path, help="where to write the files")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="validity in days")
    args = parser.parse_args(argv)
    write_development_certificates(args.directory, args.days)
    print(f"development CA, certificates and policy written to {args.directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
