"""Benchmarks: `make bench` (python -m benchmarks). Never part of the test suite."""

# Before any module of the package imports grpc: see controller.grpc_runtime.
import controller.grpc_runtime  # noqa: F401
