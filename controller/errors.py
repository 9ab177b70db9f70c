"""Refusals on the wire: in-band ``Rejection`` messages for streams, rich statuses for unary calls.

Every unary error carries ``google.rpc.ErrorInfo`` (reason: the ``RejectionReason`` enum name,
domain: the service's full name, metadata: the field at fault) so that clients can branch on a
machine-readable reason; bad fields also carry ``BadRequest``, oversells
``PreconditionFailure`` and reused ids ``ResourceInfo`` (AIP-193).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from allocation.v1 import allocation_pb2
from controller.domain import Rejected, RejectReason

REJECTION_REASONS = {
    RejectReason.INVALID_ARGUMENT: allocation_pb2.REJECTION_REASON_INVALID_ARGUMENT,
    RejectReason.INSUFFICIENT_HOLDINGS: allocation_pb2.REJECTION_REASON_INSUFFICIENT_HOLDINGS,
    RejectReason.CONFLICTING_DUPLICATE: allocation_pb2.REJECTION_REASON_CONFLICTING_DUPLICATE,
    RejectReason.LIMIT_EXCEEDED: allocation_pb2.REJECTION_REASON_LIMIT_EXCEEDED,
    RejectReason.TOO_LARGE: allocation_pb2.REJECTION_REASON_TOO_LARGE,
    RejectReason.NOT_FOUND: allocation_pb2.REJECTION_REASON_NOT_FOUND,
    RejectReason.UNAVAILABLE: allocation_pb2.REJECTION_REASON_UNAVAILABLE,
    RejectReason.STALE_REPORT: allocation_pb2.REJECTION_REASON_STALE_REPORT,
    RejectReason.TOO_MANY_STREAMS: allocation_pb2.REJECTION_REASON_TOO_MANY_STREAMS,
    RejectReason.PERMISSION_DENIED: allocation_pb2.REJECTION_REASON_PERMISSION_DENIED,
    RejectReason.RESTRICTED: allocation_pb2.REJECTION_REASON_RESTRICTED,
}

_CODES = {
    RejectReason.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    RejectReason.INSUFFICIENT_HOLDINGS: code_pb2.FAILED_PRECONDITION,
    RejectReason.LIMIT_EXCEEDED: code_pb2.FAILED_PRECONDITION,
    RejectReason.CONFLICTING_DUPLICATE: code_pb2.ALREADY_EXISTS,
    RejectReason.TOO_LARGE: code_pb2.RESOURCE_EXHAUSTED,
    RejectReason.NOT_FOUND: code_pb2.NOT_FOUND,
    RejectReason.UNAVAILABLE: code_pb2.UNAVAILABLE,
    RejectReason.STALE_REPORT: code_pb2.FAILED_PRECONDITION,
    RejectReason.TOO_MANY_STREAMS: code_pb2.RESOURCE_EXHAUSTED,
    RejectReason.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    RejectReason.RESTRICTED: code_pb2.FAILED_PRECONDITION,
}


def reason_name(reason: RejectReason) -> str:
    """The wire enum name of ``reason``, e.g. ``REJECTION_REASON_INSUFFICIENT_HOLDINGS``."""
    return allocation_pb2.RejectionReason.Name(REJECTION_REASONS[reason])


def rejection_message(rejected: Rejected) -> allocation_pb2.Rejection:
    """An in-band rejection for a stream."""
    return allocation_pb2.Rejection(
        reason=REJECTION_REASONS[rejected.reason], message=rejected.message, field=rejected.field
    )


def _packed(detail: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def _specific_detail(rejected: Rejected, resource_type: str) -> Message | None:
    detail: Message | None = None
    if rejected.reason is RejectReason.INVALID_ARGUMENT:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=rejected.field, description=rejected.message
        )
        detail = error_details_pb2.BadRequest(field_violations=[violation])
    elif rejected.reason is RejectReason.CONFLICTING_DUPLICATE:
        detail = error_details_pb2.ResourceInfo(
            resource_type=resource_type,
            resource_name=rejected.field,
            description=rejected.message,
        )
    elif rejected.reason in (
        RejectReason.INSUFFICIENT_HOLDINGS,
        RejectReason.LIMIT_EXCEEDED,
        RejectReason.RESTRICTED,
    ):
        failure = error_details_pb2.PreconditionFailure.Violation(
            type=reason_name(rejected.reason), subject=rejected.field, description=rejected.message
        )
        detail = error_details_pb2.PreconditionFailure(violations=[failure])
    return detail


def abort(
    context: grpc.ServicerContext,
    rejected: Rejected,
    domain: str,
    resource_type: str = "",
    metadata: Mapping[str, str] | None = None,
) -> NoReturn:
    """End the call with the status for ``rejected``: ErrorInfo (with ``metadata`` beside the
    field at fault), plus the detail its kind has."""
    status = status_pb2.Status(code=_CODES[rejected.reason], message=rejected.message)
    info = error_details_pb2.ErrorInfo(reason=reason_name(rejected.reason), domain=domain)
    if rejected.field:
        info.metadata["field"] = rejected.field
    info.metadata.update(metadata or {})
    status.details.append(_packed(info))
    specific = _specific_detail(rejected, resource_type)
    if specific is not None:
        status.details.append(_packed(specific))
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


@contextlib.contextmanager
def refusals_abort(
    context: grpc.ServicerContext, domain: str, resource_type: str = ""
) -> Iterator[None]:
    """Turn a ``Rejected`` raised inside the block into the call's error status."""
    try:
        yield
    except Rejected as rejected:
        abort(context, rejected, domain, resource_type)
