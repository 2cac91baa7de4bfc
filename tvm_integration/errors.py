"""Error type of the TVM integration (no TVM import here: cheap to import)."""

from __future__ import annotations


class TVMError(Exception):
    """A user-facing failure of the TVM path, with a one-line message.

    The core CLI catches it, prints ``str(err)`` and exits non-zero.  Raised
    for: an unknown target name, a missing cross compiler, an unreachable RPC
    tracker, ONNX ops TVM's importer lacks, a TVM result that disagrees with
    onnxruntime, and similar conditions the user can fix.
    """

    def __init__(self, message: str):
        # Keep it to one line whatever the caller passed.
        message = " ".join(str(message).split())
        super().__init__(message)


class UnknownTargetError(TVMError, ValueError):
    """Unknown ``--target`` name (also a ``ValueError``)."""


class MissingToolError(TVMError, RuntimeError):
    """A required external tool (cross compiler, nvcc) is not installed."""
