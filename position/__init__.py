"""position package."""

# Before any module of the package imports grpc: see controller.grpc_runtime.
import controller.grpc_runtime  # noqa: F401
