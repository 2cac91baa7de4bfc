import atexit
import os
import signal
import sys

from .outputs import finished_exit_code


def _after_run(signum, _frame):
    """SIGINT/SIGTERM outside main()'s own handler. Once the run is over (everything written, the
    message printed) a signal during interpreter shutdown (TVM's worker pools join at exit) ends the
    process with the run's own exit code instead of a KeyboardInterrupt traceback / death by signal."""
    code = finished_exit_code()
    if code is None:   # before main() took over: the usual behaviour
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        sys.exit(128 + signum)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


for _s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_s, _after_run)

from .core import runtime  # noqa: E402

runtime.OWN_PROCESS = True   # malloc may be tuned for onnxruntime's buffers (runtime._fix_mmap_threshold)

from .cli import main  # noqa: E402

_code = main()
# Python's own finalization puts SIG_DFL back before the C++ libraries (TVM, LLVM) tear down, so a
# signal then kills the process after a complete run: run the exit hooks under our handler, then leave.
atexit._run_exitfuncs()
sys.stdout.flush()
sys.stderr.flush()
os._exit(_code)
