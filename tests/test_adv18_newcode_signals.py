"""outputs.signals_blocked holds SIGINT over a temp file's creation so that an interruption cannot leave it behind.
It held only for the CLI's own handler: in a library call (models/export.export_onnx, onnx/graph.write_bytes_atomic)
SIGINT is Python's KeyboardInterrupt, and with another thread alive (torch's, onnxruntime's pools) the kernel hands a
process-directed SIGINT to that thread, so the main thread's mask holds nothing and KeyboardInterrupt was raised
inside the block, between os.open and the temp name being returned: a `.m.onnx.~cpPID-xxxxxx.tmp` (or the
writability probe's `.probe.~cp...tmp`) was left in the user's folder. Now the KeyboardInterrupt comes when the block
ends, and the cleanup sees the temp file."""
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading, time
    from collapse_passes import outputs
    threading.Thread(target=threading.Event().wait, daemon=True).start()   # a thread that takes the signal
    target, real = sys.argv[2], os.open
    def opener(path, *a, **k):
        fd = real(path, *a, **k)
        if target in os.fspath(path):   # the temp file exists: Ctrl-C now
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        return fd
    os.open = opener
    try:
        with outputs.atomic_path(os.path.join(sys.argv[1], "m.onnx")) as tmp:
            open(tmp, "wb").write(b"x")
    except KeyboardInterrupt:
        print("KeyboardInterrupt")
    finally:
        os.open = real
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("target", [".m.onnx.~cp", ".probe.~cp"])
def test_library_ctrl_c_at_temp_creation_leaves_nothing(tmp_path, target):
    out = tmp_path / "out"
    out.mkdir()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(out), target], capture_output=True, text=True, cwd=root,
                       timeout=120, env={**os.environ, "PYTHONPATH": root})
    assert p.stdout.strip() == "KeyboardInterrupt", (p.stdout, p.stderr)   # still interrupted, once the block ends
    assert sorted(os.listdir(out)) == [], p.stderr
