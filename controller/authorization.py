"""Who may call what: verified peer identities mapped to roles by a policy file.

The identity is read from the peer's certificate as gRPC verified it at the handshake (its
first DNS subject alternative name, else its common name), never from metadata, which any
client can set. The policy (``--auth-policy``, TOML) maps identities to built-in roles:

    [identities]
    "venue-1" = ["venue"]
    "aum" = ["aum"]
    "reader" = ["reader"]
    "controller" = ["controller"]
    "ops" = ["admin"]
    "compliance-desk" = ["compliance"]

    [fill_id_prefixes]        # optional; the default prefix of a venue is "<identity>/"
    "venue-1" = "V1-"

Health and reflection are open to every authenticated peer; ``admin`` may call everything.
A venue's fill ids must begin with its prefix, so that one venue can neither collide with nor,
through a duplicate's answer, read another's fills; prefixes are checked to be disjoint.
"""

from __future__ import annotations

import itertools
import logging
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from allocation.v1 import controller_service_pb2, position_service_pb2
from controller.domain import Fill, Rejected, RejectReason
from controller.errors import abort
from controller.metrics import DENIED_CALLS
from controller.transport import pem_identity
from controller.validation import shown

log = logging.getLogger(__name__)

ADMIN = "admin"
VENUE = "venue"


def _methods(service: ServiceDescriptor, *names: str) -> frozenset[str]:
    """Full method paths (``/package.Service/Method``), checked against the descriptor."""
    return frozenset(f"/{service.full_name}/{service.methods_by_name[n].name}" for n in names)


_CONTROLLER = controller_service_pb2.DESCRIPTOR.services_by_name["ControllerService"]
_POSITION = position_service_pb2.DESCRIPTOR.services_by_name["PositionService"]
ROLE_METHODS: Mapping[str, frozenset[str]] = {
    VENUE: _methods(_CONTROLLER, "SubmitFill", "StreamFills"),
    "aum": _methods(_CONTROLLER, "SetAumSplit", "StreamAumSplits"),
    "reader": _methods(_CONTROLLER, "GetPositions", "GetFillAllocation")
    | _methods(_POSITION, "GetLatestReport", "ListReports"),
    "controller": _methods(_POSITION, "ReportPositions"),
    "compliance": _methods(_CONTROLLER, "SetRestrictions"),
    ADMIN: frozenset(),  # every method: see AuthPolicy.allows
}
# Services any authenticated peer may call: health checks and reflection.
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class FillIdScope:
    """The fill ids a venue identity may use: those beginning with ``prefix``."""

    identity: str
    prefix: str

    def check(self, fill: Fill, field: str) -> Rejected | None:
        """The refusal of a fill whose id is outside the scope, else None."""
        if fill.fill_id.startswith(self.prefix):
            return None
        return Rejected(
            RejectReason.PERMISSION_DENIED,
            f"{field}.fill_id",
            f"{field}.fill_id {shown(fill.fill_id)} is not one of {self.identity!r}'s fill ids:"
            f" they begin with {self.prefix!r}",
        )


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """Identity -> roles, and the fill-id prefix of each venue identity."""

    roles: Mapping[str, frozenset[str]]
    prefixes: Mapping[str, str]

    @classmethod
    def load(cls, path: Path) -> AuthPolicy:
        """Read and check a policy file (``PolicyError`` naming the file and entry)."""
        try:
            document = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise PolicyError(f"--auth-policy {path}: {error}") from error
        return cls.from_document(document, str(path))

    @classmethod
    def from_document(cls, document: Mapping[str, Any], source: str) -> AuthPolicy:
        """A policy from parsed TOML; ``source`` names it in errors."""
        unknown = set(document) - {"identities", "fill_id_prefixes"}
        if unknown:
            raise PolicyError(
                f"{source}: unknown table(s) {sorted(unknown)}; expected [identities] and"
                " optionally [fill_id_prefixes]"
            )
        identities = document.get("identities")
        if not isinstance(identities, dict):
            raise PolicyError(f"{source}: an [identities] table (identity = [roles]) is required")
        roles: dict[str, frozenset[str]] = {}
        for identity, names in identities.items():
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise PolicyError(f"{source}: identities.{identity!r} must be a list of roles")
            wrong = sorted(set(names) - set(ROLE_METHODS))
            if wrong:
                raise PolicyError(
                    f"{source}: identities.{identity!r} has unknown role(s) {wrong};"
                    f" roles are {sorted(ROLE_METHODS)}"
                )
            roles[identity] = frozenset(names)
        prefixes = document.get("fill_id_prefixes", {})
        if not isinstance(prefixes, dict) or not all(
            isinstance(p, str) and p for p in prefixes.values()
        ):
            raise PolicyError(f"{source}: [fill_id_prefixes] maps identities to non-empty strings")
        policy = cls(roles, dict(prefixes))
        policy._check_prefixes(source)
        return policy

    def _check_prefixes(self, source: str) -> None:
        venues = sorted(
            (self._prefix(identity), identity)
            for identity, names in self.roles.items()
            if VENUE in names and ADMIN not in names
        )
        # Sorted, a prefix of another prefix comes right before one it is a prefix of.
        for (first, first_id), (second, second_id) in itertools.pairwise(venues):
            if second.startswith(first):
                raise PolicyError(
                    f"{source}: fill-id prefix {first!r} of {first_id!r} is a prefix of"
                    f" {second!r} of {second_id!r}: their fill ids could collide"
                )

    def _prefix(self, identity: str) -> str:
        return self.prefixes.get(identity, f"{identity}/")

    def roles_of(self, identity: str) -> frozenset[str]:
        """The identity's roles (none when it is not in the policy)."""
        return self.roles.get(identity, frozenset())

    def allows(self, identity: str, method: str) -> bool:
        """Whether ``identity`` may call ``method`` (a full path, ``/package.Service/Method``)."""
        if method.startswith(OPEN_SERVICES):
            return True
        held = self.roles_of(identity)
        return ADMIN in held or any(method in ROLE_METHODS[role] for role in held)

    def fill_id_scope(self, identity: str) -> FillIdScope | None:
        """The fill ids ``identity`` may submit; None when unrestricted (admin)."""
        if ADMIN in self.roles_of(identity):
            return None
        return FillIdScope(identity, self._prefix(identity))


def peer_identity(context: grpc.ServicerContext) -> str | None:
    """The identity in the peer's verified certificate; None for a peer without one."""
    certificates = context.auth_context().get("x509_pem_cert")
    if not certificates:
        return None
    return pem_identity(certificates[0])


def _roles_needed(method: str) -> list[str]:
    return [*sorted(role for role, methods in ROLE_METHODS.items() if method in methods), ADMIN]


Check: TypeAlias = Callable[[grpc.ServicerContext], None]


if TYPE_CHECKING:
    # Generic only in grpc-stubs; at run time the class cannot be subscripted.
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor


class AuthorizationInterceptor(_ServerInterceptor):
    """Refuses, before the handler reads anything, every call whose identity lacks the role:
    PERMISSION_DENIED naming the identity and the method, logged and counted."""

    def __init__(self, policy: AuthPolicy) -> None:
        """Enforce ``policy``."""
        self._policy = policy

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """The handler, guarded by the role check (open services unguarded)."""
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        return _guarded(handler, lambda context: self._check(context, method))

    def _check(self, context: grpc.ServicerContext, method: str) -> None:
        identity = peer_identity(context)
        if identity is not None and self._policy.allows(identity, method):
            return
        shown_identity = "(no client certificate)" if identity is None else repr(identity)
        held = sorted(self._policy.roles_of(identity or ""))
        DENIED_CALLS.labels(identity or "", method).inc()
        log.warning(
            "call denied",
            extra={"identity": identity, "method": method, "roles": held},
        )
        abort(
            context,
            Rejected(
                RejectReason.PERMISSION_DENIED,
                "",
                f"identity {shown_identity} may not call {method}: it has the roles"
                f" {held or 'none'}; the method needs one of {_roles_needed(method)}",
            ),
            method.split("/")[1],
            metadata={"identity": identity or "", "method": method},
        )


def _guarded(
    handler: grpc.RpcMethodHandler[Any, Any], check: Check
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with ``check(context)`` run first; the check aborts to deny."""
    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary

        def guarded_unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(guarded_unary_unary, deserialize, serialize)
    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream

        def guarded_unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            check(context)
            yield from unary_stream(request, context)

        return grpc.unary_stream_rpc_method_handler(guarded_unary_stream, deserialize, serialize)
    if handler.stream_unary is not None:
        stream_unary = handler.stream_unary

        def guarded_stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            check(context)
            return stream_unary(requests, context)

        return grpc.stream_unary_rpc_method_handler(guarded_stream_unary, deserialize, serialize)
    stream_stream = handler.stream_stream
    assert stream_stream is not None

    def guarded_stream_stream(
        requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        check(context)
        yield from stream_stream(requests, context)

    return grpc.stream_stream_rpc_method_handler(guarded_stream_stream, deserialize, serialize)
