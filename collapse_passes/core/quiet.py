"""Keep torch's exporter noise off the user's terminal: our one-line error says what failed."""
from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import tempfile
import warnings


@contextlib.contextmanager
def exporter_silenced():
    """Python warnings, sys.stdout/stderr and file descriptors 1 and 2 discarded inside the block, around a
    torch exporter call whose failure the caller reports in one line. A failing TorchScript ONNX export prints
    its whole IR graph from C++ ("Torch IR graph at exception: ...": torch's setup_onnx_logging turns ONNX
    logging on and never off), which redirecting sys.stdout does not catch; torch.export logs the traced
    graph with each data-dependent guard it cannot decide ("Unable to find user code corresponding to
    {u0}", ~30 lines a time) through a logging handler bound to the real stderr."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        saved = []
        try:
            for stream in (sys.__stdout__, sys.__stderr__):
                if stream is not None:
                    stream.flush()
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
        except (OSError, ValueError, AttributeError):   # no real stdout/stderr (embedded, closed): nothing to hide
            for _, dup in saved:
                os.close(dup)
            saved = None
        if saved is None:
            yield
            return
        try:
            libc_flush = ctypes.CDLL(None).fflush
        except (OSError, AttributeError):
            libc_flush = None
        with tempfile.TemporaryFile() as sink:
            for fd, _ in saved:
                os.dup2(sink.fileno(), fd)
            try:
                yield
            finally:
                for stream in (sys.__stdout__, sys.__stderr__):   # buffered noise goes to the sink too
                    with contextlib.suppress(OSError, ValueError, AttributeError):
                        stream.flush()
                if libc_flush is not None:
                    libc_flush(None)   # C stdio's buffer likewise
                for fd, dup in saved:
                    os.dup2(dup, fd)
                    os.close(dup)
