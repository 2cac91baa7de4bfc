"""What the CLI promises about the user's files (docs/file_safety.md), attacked with generated inputs.

Every run must end with exit 0, 1 or 2 (never a traceback), leave every input byte-identical,
touch no file outside its output plan, and leave no temp file behind. The CLI runs in-process
(collapse_passes.cli.main) for speed; signals are sent to a few real subprocesses.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import helper

from collapse_passes import outputs
from collapse_passes.cli import main
from collapse_passes.errors import CollapseError
from conftest import ROOT, make_model, rnd, vinfo

C = 4


def small_model():
    inits = {"w1": rnd(C, C, 1, 1, seed=1), "b1": rnd(C, seed=2), "w2": rnd(C, C, 3, 3, seed=3)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="/block/conv1/Conv", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="/block/relu/Relu"),
             helper.make_node("Conv", ["r", "w2"], ["z"], name="/block/conv2/Conv", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["z"], ["y"], name="/out_act/Relu")]
    return make_model(nodes, [vinfo("x", [1, C, 6, 6])], [vinfo("y", [1, C, 6, 6])], inits)


def cli(*args, cwd=None):
    """(exit code, stdout, stderr) of an in-process run."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([str(a) for a in args])
            except SystemExit as e:  # argparse
                rc = e.code
    finally:
        os.chdir(old)
    return rc, out.getvalue(), err.getvalue()


def snapshot(root) -> dict:
    """path -> what it is (type, content hash, link target, mode), without following links."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            if stat.S_ISLNK(st_.st_mode):
                snap[p] = ("link", os.readlink(p))
            elif stat.S_ISREG(st_.st_mode):
                with open(p, "rb") as f:
                    snap[p] = ("file", hashlib.sha256(f.read()).hexdigest(), stat.S_IMODE(st_.st_mode))
            elif stat.S_ISDIR(st_.st_mode):
                snap[p] = ("dir",)
            else:
                snap[p] = ("other", st_.st_mode)
    return snap


def temps_in(root) -> list[str]:
    return [os.path.join(d, n) for d, ds, fs in os.walk(root) for n in ds + fs if outputs.is_temp_name(n)]


def assert_promise(rc, err, before, after, allowed=()):
    assert rc in (0, 1, 2), err
    assert "Traceback" not in err, err
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), err
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    if rc == 2:
        assert not changed, (changed, err)
    else:
        assert changed <= {os.fspath(a) for a in allowed}, (changed, allowed, err)


def _immutable_dir(path) -> str | None:
    """A folder root cannot write in: chattr +i, else a read-only bind mount; None if neither works."""
    os.makedirs(path)
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", path], capture_output=True).returncode == 0:
        return "chattr"
    if shutil.which("mount") and subprocess.run(["mount", "--bind", path, path], capture_output=True).returncode == 0:
        if subprocess.run(["mount", "-o", "remount,ro,bind", path], capture_output=True).returncode == 0:
            return "bind"
        subprocess.run(["umount", path], capture_output=True)
    return None


def _release(path, how):
    if how == "chattr":
        subprocess.run(["chattr", "-i", path], capture_output=True)
    elif how == "bind":
        subprocess.run(["umount", path], capture_output=True)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A folder with the inputs and every kind of path that could alias them."""
    d = tmp_path_factory.mktemp("ws")
    onnx.save(small_model(), d / "m.onnx")
    (d / "s.json").write_text(json.dumps({"scores": {"block.relu": 0.0, "out_act": 0.9}}))
    np.savez(d / "c.npz", x=np.random.default_rng(0).standard_normal((2, C, 6, 6)).astype(np.float32))
    (d / "sub").mkdir()
    (d / "sub" / "deep").mkdir()
    os.symlink("m.onnx", d / "link.onnx")
    os.link(d / "m.onnx", d / "hard.onnx")
    os.symlink("sub", d / "subl")
    os.symlink("sub/deep", d / "far")          # far/.. is sub, not the workspace
    os.symlink("newtarget.onnx", d / "dangling")
    os.mkfifo(d / "fifo")
    (d / "marked").mkdir()
    (d / "marked" / outputs.EXPORT_MARKER).write_text("")
    how = _immutable_dir(str(d / "ro"))
    yield d, how
    _release(str(d / "ro"), how)


INPUTS = ("m.onnx", "s.json", "c.npz", "hard.onnx")
ALIASES = ["m.onnx", "./m.onnx", "sub/../m.onnx", "subl/../m.onnx", "link.onnx", "hard.onnx", "s.json",
           "sub/../s.json", "c.npz", "./c.npz", "far/../../m.onnx"]
SPECIAL = ["/dev/null", "fifo", "sub", "subl", "marked", "nodir/x.onnx", "x" * 300 + ".json", "ro/x.onnx"]
FRESH = ["out1.onnx", "out2.json", "sub/out3.png", "subl/out4.json", "far/../o5.json", "dangling"]


def _abs_pool(d):
    return [str(d / "m.onnx"), str(d / "sub" / ".." / "s.json")]


def _planned(d, argv) -> set:
    """Where each output of a run may land (symlinks resolved)."""
    flags = {"-o", "--report", "--save-scores", "--plot"}
    got = {os.path.realpath(os.path.join(d, argv[i + 1])) for i, a in enumerate(argv) if a in flags}
    if "-o" not in argv and "--dry-run" not in argv:
        got.add(os.path.join(d, "m.collapsed.onnx"))
    return got


def _reset(d, baseline):
    for p in sorted(set(snapshot(d)) - set(baseline), reverse=True):
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generated_output_paths_never_destroy_a_file(ws, data):
    d, how = ws
    pool = ALIASES + SPECIAL + FRESH + _abs_pool(d)
    if how is None:
        pool.remove("ro/x.onnx")
    argv = ["m.onnx", "--scores", "s.json", "--threshold", "0"]
    drawn = []
    for flag in ("-o", "--report", "--save-scores", "--plot"):
        p = data.draw(st.none() | st.sampled_from(pool), label=flag)
        if p is not None:
            argv += [flag, p]
            drawn.append(p)
    if data.draw(st.booleans(), label="calib"):
        argv += ["--calib", "c.npz"]
    if "-o" not in argv and data.draw(st.booleans(), label="dry"):
        argv.append("--dry-run")
    baseline = snapshot(d)
    inputs = [n for n in INPUTS if n != "c.npz" or "--calib" in argv]   # any other file is fair game for -o
    sums = {n: baseline[str(d / n)] for n in inputs}
    try:
        rc, _, err = cli(*argv, cwd=d)
        after = snapshot(d)
        assert_promise(rc, err, baseline, after, _planned(d, argv))
        assert {n: after[str(d / n)] for n in inputs} == sums
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
        assert not temps_in(d)
        distinct = len({os.path.realpath(os.path.join(d, p)) for p in drawn} | {str(d / "m.collapsed.onnx")}) \
            == len(drawn) + 1
        if all(p in FRESH for p in drawn) and distinct:
            assert rc == 0, err  # nothing aliased: the run goes through
    finally:
        _reset(d, baseline)
        if snapshot(d).get(str(d / "c.npz")) != baseline[str(d / "c.npz")]:
            np.savez(d / "c.npz", x=np.random.default_rng(0).standard_normal((2, C, 6, 6)).astype(np.float32))


def _json_number(draw):
    kind = draw(st.sampled_from(["int", "float", "exp", "neg"]))
    digits = draw(st.sampled_from([1, 17, 309, 4300, 4301, 20000]))
    body = "9" * digits
    if kind == "float":
        body += "." + "5" * draw(st.integers(1, 400))
    elif kind == "exp":
        body += "e" + draw(st.sampled_from(["308", "309", "-400", "99999", "+1"]))
    elif kind == "neg":
        body = "-" + body
    return body


@st.composite
def scores_documents(draw):
    value = _json_number(draw)
    depth = draw(st.sampled_from([0, 1, 30, 5000, 200000]))
    wrap = draw(st.sampled_from(["list", "dict"]))
    if wrap == "list":
        value = "[" * depth + value + "]" * depth
    else:
        value = '{"a": ' * depth + value + "}" * depth
    where = draw(st.sampled_from(["score", "root", "key"]))
    if where == "score":
        return '{"scores": {"block.relu": %s, "out_act": 1}}' % value
    if where == "root":
        return value
    return '{"scores": {"block.relu": 0, "x": %s}}' % value


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=scores_documents())
def test_generated_scores_files_of_any_size_and_depth(ws, doc):
    d, _ = ws
    sdir = d / "gen"
    sdir.mkdir(exist_ok=True)
    (sdir / "g.json").write_text(doc)
    baseline = snapshot(d)
    try:
        rc, _, err = cli("m.onnx", "--scores", "gen/g.json", "--threshold", "0.5", "-o", "gen/o.onnx", cwd=d)
        assert_promise(rc, err, baseline, snapshot(d), {str(sdir / "o.onnx")})
        assert not temps_in(d)
    finally:
        shutil.rmtree(sdir)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generated_corrupt_calibration_archives(ws, data):
    d, _ = ws
    good = (d / "c.npz").read_bytes()
    how = data.draw(st.sampled_from(["truncate", "flip", "insert", "object", "dtype", "scalar"]))
    cdir = d / "gen2"
    cdir.mkdir(exist_ok=True)
    p = cdir / "k.npz"
    if how == "truncate":
        p.write_bytes(good[:data.draw(st.integers(0, len(good) - 1))])
    elif how == "flip":
        b = bytearray(good)
        for i in data.draw(st.lists(st.integers(0, len(good) - 1), min_size=1, max_size=8)):
            b[i] ^= 0xFF
        p.write_bytes(bytes(b))
    elif how == "insert":
        i = data.draw(st.integers(0, len(good)))
        p.write_bytes(good[:i] + data.draw(st.binary(min_size=1, max_size=64)) + good[i:])
    elif how == "object":
        np.savez(p, x=np.array([{"a": 1}, None], dtype=object))
    elif how == "dtype":
        np.savez(p, x=np.zeros((2, C, 6, 6), data.draw(st.sampled_from(["complex64", "U3", "V4", "bool"]))))
    else:
        np.savez(p, x=np.float32(1))
    baseline = snapshot(d)
    try:
        rc, _, err = cli("m.onnx", "--collapse", "block.relu", "--calib", "gen2/k.npz", "-o", "gen2/o.onnx", cwd=d)
        assert_promise(rc, err, baseline, snapshot(d), {str(cdir / "o.onnx")})
        if how in ("object", "dtype", "scalar", "truncate"):
            assert rc == 2, err
        assert not temps_in(d)
    finally:
        shutil.rmtree(cdir)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(flag=st.sampled_from(["--rtol", "--atol", "--seed", "--calib-batches", "--check", "--per-op-overhead",
                             "--approx-max-error", "--threshold", "--remove"]),
       value=st.one_of(st.integers(-10**20, 10**3).map(str), st.sampled_from(["nan", "-inf", "inf", "-0.0", "1e400",
                                                                          "-1e-300", "x", ""])))
def test_generated_numeric_flags(ws, flag, value):
    d, _ = ws
    argv = ["m.onnx", "--scores", "s.json", "--dry-run", flag, value]
    if flag == "--calib-batches":
        argv += ["--calib", "c.npz"]
    if flag == "--approx-max-error":
        argv.append("--allow-border-approx")
    baseline = snapshot(d)
    rc, _, err = cli(*argv, cwd=d)
    assert_promise(rc, err, baseline, snapshot(d))


# ------------------------------------------------------------------------ the cases of issue 14

@pytest.fixture
def work(tmp_path):
    onnx.save(small_model(), tmp_path / "m.onnx")
    (tmp_path / "s.json").write_text(json.dumps({"scores": {"block.relu": 0.0, "out_act": 0.9}}))
    return tmp_path


def one_line_error(rc, err, *needles):
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("flag", ["--report", "--save-scores", "--plot"])
def test_report_scores_plot_never_overwrite_an_input(work, flag):
    before = snapshot(work)
    for target in ("m.onnx", "s.json"):
        rc, _, err = cli("m.onnx", "--scores", "s.json", "--threshold", "0", flag, target, "-o", "o.onnx", cwd=work)
        one_line_error(rc, err, flag, "never overwritten")
    assert snapshot(work) == before


def test_report_equal_to_output_refused(work):
    rc, _, err = cli("m.onnx", "-o", "o.onnx", "--report", "./o.onnx", cwd=work)
    one_line_error(rc, err, "-o", "--report", "same file")
    assert not (work / "o.onnx").exists()


@pytest.mark.parametrize("flag", ["-o", "--report", "--save-scores"])
def test_device_nodes_are_never_replaced(work, flag):
    argv = ["m.onnx", "--scores", "s.json", "--threshold", "0", flag, "/dev/null"]
    rc, _, err = cli(*argv, cwd=work)
    one_line_error(rc, err, "/dev/null", "device")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_fifo_and_directory_refused(work):
    os.mkfifo(work / "p")
    one_line_error(*cli("m.onnx", "--report", "p", cwd=work)[::2], "FIFO")
    (work / "d").mkdir()
    one_line_error(*cli("m.onnx", "-o", "d", cwd=work)[::2], "directory")
    one_line_error(*cli("m.onnx", "--collapse", "block.relu", "--calib", "p", cwd=work)[::2], "--calib", "FIFO")


def test_hard_link_and_symlink_aliases_refused(work):
    os.link(work / "m.onnx", work / "h.onnx")
    os.symlink(work / "s.json", work / "sl.json")
    before = snapshot(work)
    one_line_error(*cli("m.onnx", "-o", "h.onnx", cwd=work)[::2], "input model")
    one_line_error(*cli("m.onnx", "--scores", "s.json", "--threshold", "0", "--report", "sl.json", cwd=work)[::2],
                   "--scores file")
    assert snapshot(work) == before


def test_external_data_is_an_input(tmp_path):
    onnx.save(small_model(), tmp_path / "e.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="e.data", size_threshold=0)
    data = (tmp_path / "e.data").read_bytes()
    one_line_error(*cli("e.onnx", "--report", "e.data", cwd=tmp_path)[::2], "external data")
    assert (tmp_path / "e.data").read_bytes() == data


def test_missing_parent_and_long_component(work):
    one_line_error(*cli("m.onnx", "-o", "no/such/o.onnx", cwd=work)[::2], "does not exist")
    one_line_error(*cli("m.onnx", "-o", "y" * 256 + ".onnx", cwd=work)[::2], "255 bytes")
    one_line_error(*cli("m.onnx", "--report", "z" * 300 + "/r.json", cwd=work)[::2], "255 bytes")
    assert sorted(os.listdir(work)) == ["m.onnx", "s.json"]


def test_unwritable_folder_refused_before_any_work(work):
    how = _immutable_dir(str(work / "ro"))
    if how is None:
        pytest.skip("neither chattr +i nor a read-only bind mount is available")
    try:
        rc, out, err = cli("m.onnx", "--collapse", "block.relu", "-o", "o.onnx", "--report", "ro/r.json", cwd=work)
        one_line_error(rc, err, "ro", "cannot write")
        assert out == "" and not (work / "o.onnx").exists()   # refused before the collapse ran
    finally:
        _release(str(work / "ro"), how)


def test_export_never_replaces_a_folder_it_did_not_make(work):
    from collapse_passes.cli import build_parser, build_plan

    (work / "mine").mkdir()
    (work / "mine" / "keep.txt").write_text("precious")
    p = build_parser()
    if not hasattr(p, "tvm_flags"):
        pytest.skip("tvm_integration not importable")
    old = os.getcwd()
    os.chdir(work)
    try:
        for target, needle in ((".", "holds the input"), ("mine", "not made by this tool"), ("m.onnx", "input model"),
                               ("s.json", "not a directory")):
            with pytest.raises(CollapseError, match=needle):
                build_plan(p.parse_args(["m.onnx", "--target", "cpu", "--export", target]))
        (work / "prev").mkdir()
        (work / "prev" / outputs.EXPORT_MARKER).write_text("")
        build_plan(p.parse_args(["m.onnx", "--target", "cpu", "--export", "prev"]))   # made by us: allowed
        build_plan(p.parse_args(["m.onnx", "--target", "cpu", "--export", "new"]))    # new: allowed
        with pytest.raises(CollapseError, match="input model"):
            build_plan(p.parse_args(["m.onnx", "--target", "cpu", "--tune-dir", "./m.onnx"]))
        with pytest.raises(CollapseError, match="inside"):
            build_plan(p.parse_args(["m.onnx", "--target", "cpu", "--export", "prev", "-o", "prev/o.onnx"]))
    finally:
        os.chdir(old)
    assert (work / "mine" / "keep.txt").read_text() == "precious"
    rc, _, err = cli("m.onnx", "--export", "new", cwd=work)   # without --target: refused, not ignored
    one_line_error(rc, err, "--export", "--target")


def test_outputs_get_the_mode_a_plain_open_gives(work):
    old = os.umask(0o027)
    try:
        assert cli("m.onnx", "--collapse", "block.relu", "-o", "o.onnx", "--report", "r.json", cwd=work)[0] == 0
        assert stat.S_IMODE(os.stat(work / "o.onnx").st_mode) == 0o640
        assert stat.S_IMODE(os.stat(work / "r.json").st_mode) == 0o640
        os.chmod(work / "o.onnx", 0o604)   # replacing an existing file keeps its mode, like open("w")
        assert cli("m.onnx", "--collapse", "block.relu", "-o", "o.onnx", cwd=work)[0] == 0
        assert stat.S_IMODE(os.stat(work / "o.onnx").st_mode) == 0o604
    finally:
        os.umask(old)


def test_symlinked_output_is_written_through(work):
    (work / "real").mkdir()
    os.symlink("real/o.onnx", work / "lo.onnx")
    assert cli("m.onnx", "--collapse", "block.relu", "-o", "lo.onnx", cwd=work)[0] == 0
    assert os.path.islink(work / "lo.onnx") and (work / "real" / "o.onnx").is_file()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temps_of_killed_runs_are_removed(work):
    dead = _dead_pid()
    stale_f = work / f".o.onnx.~cp{dead}-abc123.tmp"
    stale_d = work / f".exp.~cp{dead}-xyz789.tmpdir"
    live = work / f".o.onnx.~cp{os.getppid()}-live00.tmp"   # pid alive: another run's, kept
    lookalike = work / ".o.onnx.notours.tmp"
    for f in (stale_f, live, lookalike):
        f.write_text("x")
    stale_d.mkdir()
    (stale_d / "model.so").write_text("half")
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "-o", "o.onnx", cwd=work)
    assert rc == 0 and "removed 2 temp file(s)" in err, err
    assert not stale_f.exists() and not stale_d.exists() and live.exists() and lookalike.exists()


def test_interruption_says_exactly_what_was_written(work, monkeypatch):
    calls = []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the report, after the model landed
            raise outputs.Interrupted(signal.SIGTERM)
        os.replace(src, dst)

    monkeypatch.setattr(outputs.OutputPlan, "_rename", staticmethod(rename))
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "-o", "o.onnx", "--report", "r.json", cwd=work)
    assert rc == 128 + signal.SIGTERM
    assert err.strip().splitlines()[-1] == "interrupted (SIGTERM); wrote o.onnx (model)"
    assert (work / "o.onnx").exists() and not (work / "r.json").exists() and not temps_in(work)

    calls.clear()
    monkeypatch.setattr(outputs.OutputPlan, "_rename", staticmethod(
        lambda s, d: (_ for _ in ()).throw(KeyboardInterrupt())))
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "-o", "o2.onnx", cwd=work)
    assert rc == 130 and err.strip().endswith("interrupted (SIGINT); nothing written")
    assert not (work / "o2.onnx").exists() and not temps_in(work)


_READY = ("import sys, signal, runpy; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "import collapse_passes.cli; print('ready', flush=True); sys.argv[0] = 'collapse_passes'; "
          "runpy.run_module('collapse_passes', run_name='__main__')")   # python -m collapse_passes, timed


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_real_signals_leave_no_temp_and_an_exact_message(work, sig):
    """The signal lands at some point of a real run (after the imports): whatever was renamed into
    place is exactly what the last line names, and no temp file survives."""
    argv = [sys.executable, "-c", _READY, "m.onnx", "--scores", "s.json", "--threshold", "0",
            "-o", "o.onnx", "--report", "r.json", "--save-scores", "k.json", "--check", "100"]
    names = ("o.onnx", "r.json", "k.json")
    codes = set()
    for delay in (0.05, 0.2, 0.5):
        for f in names:
            (work / f).unlink(missing_ok=True)
        # faulthandler: a crash of the child (one SIGSEGV seen in CI, 2026-11-29) shows its threads' stacks in `err`
        p = subprocess.Popen(argv, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": ROOT, "PYTHONFAULTHANDLER": "1"})
        assert p.stdout.readline().strip() == "ready"
        time.sleep(delay)
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
        codes.add(p.returncode)
        # -sig: before main() took the signals over; a signal after main() returned (everything written,
        # interpreter shutting down) ends the process with the run's own code 0, not -sig (__main__.py)
        assert p.returncode in (0, 128 + sig, -sig), err
        assert "Traceback" not in err, err
        assert not temps_in(work)
        present = {f for f in names if (work / f).exists()}
        if p.returncode == 128 + sig:
            last = err.strip().splitlines()[-1]
            assert last.startswith("interrupted (")
            assert {f for f in names if f in last} == present, (last, present)
            assert ("nothing written" in last) == (not present)
        elif p.returncode == 0:
            assert present == set(names)
        else:
            assert not present
    assert 128 + sig in codes   # at least one signal was handled mid-run


def test_tvm_failure_after_a_verified_collapse_keeps_the_model(work, monkeypatch):
    hook = pytest.importorskip("tvm_integration.cli_hook")

    def fail(args, original, collapsed, feeds, console=None):
        raise hook.TVMError("simulated TVM failure")

    monkeypatch.setattr(hook, "run_from_args", fail)
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "--target", "cpu", "-o", "o.onnx", "--report", "r.json",
                     cwd=work)
    assert rc == 2 and "simulated TVM failure" in err and "wrote o.onnx (model), r.json (report)" in err, err
    assert onnx.load(work / "o.onnx").graph.node
    assert json.loads((work / "r.json").read_text())["tvm"]["error"].endswith("simulated TVM failure")

    def mismatch(args, original, collapsed, feeds, console=None):
        assert args.verbose is True and args.rtol == 0.01   # the user's flags reach the hook
        raise hook.TVMMismatchError("TVM output differs")

    monkeypatch.setattr(hook, "run_from_args", mismatch)
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "--target", "cpu", "-o", "o2.onnx", "--verbose",
                     "--rtol", "0.01", cwd=work)
    assert rc == 1 and (work / "o2.onnx").exists(), err


def test_tvm_output_check_uses_the_given_tolerances():
    hook = pytest.importorskip("tvm_integration.cli_hook")
    ref = [np.ones(10, np.float32)]
    got = [np.ones(10, np.float32) * 1.001]
    assert not hook._compare(got, ref)["ok"]                       # default rtol 1e-4
    assert hook._compare(got, ref, rtol=1e-2, atol=1e-5)["ok"]


@pytest.mark.parametrize("argv,needle", [
    (["--rtol", "-1"], "--rtol"), (["--atol", "nan"], "--atol"), (["--seed", "-1"], "--seed"),
    (["--calib-batches", "0", "--calib", "c.npz"], "--calib-batches"), (["--calib-batches", "-1"], "--calib-batches"),
    (["--calib-batches", "2"], "--calib"), (["--check", "0"], "--check"),
    (["--approx-max-error", "0.1"], "--allow-border-approx"), (["--per-op-overhead", "-1"], "--per-op-overhead"),
    (["--per-op-overhead", "5", "--no-merge"], "--no-merge"), (["--threshold", "0"], "--scores"),
    (["--plot", "p.png"], "--method"), (["--dry-run", "--force"], "--force"), (["--dry-run", "-o", "o.onnx"], "-o"),
    (["--list-keys", "--report", "r.json"], "--report"), (["--bogus"], "unrecognized"),
])
def test_meaningless_or_impossible_flags_refused(work, argv, needle):
    np.savez(work / "c.npz", x=np.zeros((2, C, 6, 6), np.float32))
    before = snapshot(work)
    one_line_error(*cli("m.onnx", *argv, cwd=work)[::2], needle)
    assert snapshot(work) == before


def test_bug_is_exit_3_with_traceback(work, monkeypatch):
    import collapse_passes.api as api

    def broken(*a, **k):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(api, "collapse", broken)
    rc, _, err = cli("m.onnx", "-o", "o.onnx", cwd=work)
    assert rc == 3 and "Traceback" in err and "ZeroDivisionError" in err and "report" in err.splitlines()[-1]
    assert not (work / "o.onnx").exists() and not temps_in(work)


def test_nothing_collapsed_is_said_on_stderr(work):
    rc, _, err = cli("m.onnx", "--scores", "s.json", "--threshold", "-5", "-o", "o.onnx", cwd=work)
    assert rc == 0 and "collapsed, folded and merged nothing" in err
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "-o", "o.onnx", cwd=work)
    assert rc == 0 and "nothing" not in err


def test_list_keys_prints_tabs_and_nameless_nodes_get_keys(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], kernel_shape=[1, 1]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["z"], kernel_shape=[1, 1]), helper.make_node("Relu", ["z"], ["y"])]
    m = make_model(nodes, [vinfo("x", [1, C, 6, 6])], [vinfo("y", [1, C, 6, 6])],
                   {"w1": rnd(C, C, 1, 1, seed=1), "w2": rnd(C, C, 1, 1, seed=2)})
    onnx.save(m, tmp_path / "n.onnx")
    rc, out, _ = cli("n.onnx", "--list-keys", cwd=tmp_path)
    rows = [line.split("\t") for line in out.splitlines()]
    assert rc == 0 and [r[:2] for r in rows] == [["Relu_1", "relu"], ["Relu_3", "relu"]]
    (tmp_path / "s.json").write_text(json.dumps({"scores": {"Relu_1": 0.0, "Relu_3": 1.0}}))
    rc, _, err = cli("n.onnx", "--scores", "s.json", "--threshold", "0.5", "-o", "o.onnx", "--report", "r.json",
                     cwd=tmp_path)
    assert rc == 0, err
    rep = json.loads((tmp_path / "r.json").read_text())
    assert [a["key"] for a in rep["activations"] if a["collapsed"]] == ["Relu_1"]


def test_input_model_that_outputs_nan_is_not_blamed_on_the_collapse(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], kernel_shape=[1, 1], name="c1"),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("Log", ["x"], ["l"], name="log"), helper.make_node("Add", ["r", "l"], ["y"], name="add")]
    onnx.save(make_model(nodes, [vinfo("x", [1, C, 6, 6])], [vinfo("y", [1, C, 6, 6])], {"w1": rnd(C, C, 1, 1)}),
              tmp_path / "nan.onnx")
    rc, out, err = cli("nan.onnx", "--collapse", "act", "-o", "o.onnx", "--report", "r.json", cwd=tmp_path)
    assert rc == 0, err
    warn = json.loads((tmp_path / "r.json").read_text())["warnings"]
    assert any("input model itself outputs non-finite" in w and "NaN" in w for w in warn), warn


def test_input_model_whose_output_ignores_the_input_is_warned(tmp_path):
    nodes = [helper.make_node("Mul", ["x", "zero"], ["h"], name="mul"),
             helper.make_node("Conv", ["h", "w1"], ["h2"], kernel_shape=[1, 1], name="c1"),
             helper.make_node("Relu", ["h2"], ["y"], name="act")]
    onnx.save(make_model(nodes, [vinfo("x", [1, C, 6, 6])], [vinfo("y", [1, C, 6, 6])],
                         {"w1": rnd(C, C, 1, 1), "zero": np.zeros((1,), np.float32)}), tmp_path / "k.onnx")
    rc, _, err = cli("k.onnx", "--collapse", "act", "--check", "1", "-o", "o.onnx", "--report", "r.json", cwd=tmp_path)
    assert rc == 0, err
    warn = json.loads((tmp_path / "r.json").read_text())["warnings"]
    assert any("do not depend on its input" in w for w in warn), warn


def test_calibration_batches_that_do_not_fit_the_model(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], kernel_shape=[1, 1], name="c1"),
             helper.make_node("Relu", ["h"], ["r"], name="act"), helper.make_node("Reshape", ["r", "shp"], ["y"], name="rs")]
    onnx.save(make_model(nodes, [vinfo("x", ["N", C, 6, 6])], [vinfo("y", [1, C * 36])],
                         {"w1": rnd(C, C, 1, 1), "shp": np.array([1, C * 36], np.int64)}), tmp_path / "d.onnx")
    np.savez(tmp_path / "c.npz", x=np.zeros((2, C, 6, 6), np.float32))
    rc, _, err = cli("d.onnx", "--collapse", "act", "--calib", "c.npz", "-o", "o.onnx", cwd=tmp_path)
    one_line_error(rc, err, "onnxruntime")
    assert not (tmp_path / "o.onnx").exists()


# ------------------------------------------------------------------------ later flags (--eval, pruning, TVM)

def classifier_model():
    """small_model with a (N, 3) logits head, so --eval and --prune-ratio have something to measure."""
    inits = {"w1": rnd(C, C, 1, 1, seed=1), "b1": rnd(C, seed=2), "w2": rnd(C, C, 3, 3, seed=3),
             "wf": rnd(C, 3, seed=4), "bf": rnd(3, seed=5)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="/block/conv1/Conv", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="/block/relu/Relu"),
             helper.make_node("Conv", ["r", "w2"], ["z"], name="/block/conv2/Conv", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["z"], ["a"], name="/out_act/Relu"),
             helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="/fc/Gemm")]
    return make_model(nodes, [vinfo("x", ["N", C, 6, 6])], [vinfo("y", ["N", 3])], inits)


EVAL_X = np.random.default_rng(3).standard_normal((5, C, 6, 6)).astype(np.float32)


@pytest.fixture
def clf(tmp_path):
    onnx.save(classifier_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "e.npz", x=EVAL_X, labels=np.array([0, 1, 2, 0, 1]))
    (tmp_path / "imp.json").write_text(json.dumps({"/block/conv1/Conv": [1, 2, 3, 4]}))
    (tmp_path / "cd").mkdir()
    np.save(tmp_path / "cd" / "x.npy", EVAL_X)
    os.symlink("e.npz", tmp_path / "elink")
    os.link(tmp_path / "e.npz", tmp_path / "ehard.npz")
    os.symlink("imp.json", tmp_path / "implink.json")
    os.link(tmp_path / "cd" / "x.npy", tmp_path / "xhard.npy")
    (tmp_path / "sub").mkdir()
    return tmp_path


@pytest.mark.parametrize("flag", ["-o", "--report", "--save-scores", "--plot"])
@pytest.mark.parametrize("alias", ["e.npz", "./e.npz", "elink", "ehard.npz", "sub/../e.npz", "imp.json",
                                   "implink.json", "cd/x.npy", "xhard.npy"])
def test_eval_importance_and_calib_files_are_inputs(clf, flag, alias):
    """--eval data was missing from the output plan: `-o e.npz --eval e.npz` replaced the data."""
    (clf / "s.json").write_text(json.dumps({"scores": {"block.relu": 0.0}}))
    before = snapshot(clf)
    rc, _, err = cli("m.onnx", "--scores", "s.json", "--threshold", "0", "--eval", "e.npz", "--calib", "cd",
                     "--prune-ratio", "0.25", "--prune-importance", "imp.json", flag, alias, cwd=clf)
    one_line_error(rc, err, "inputs are never overwritten")
    assert snapshot(clf) == before


def _no_hang(seconds=60):
    """Fail (instead of blocking the suite) if the code under test opens a FIFO for reading."""
    class Hung(Exception):
        pass

    def handler(*_):
        raise Hung("blocked: a FIFO was opened")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    return old


def test_fifo_or_device_among_calibration_npy_files_refused(clf):
    (clf / "cf").mkdir()
    np.save(clf / "cf" / "a.npy", EVAL_X)
    os.mkfifo(clf / "cf" / "b.npy")
    (clf / "cz").mkdir()
    os.symlink("/dev/zero", clf / "cz" / "x.npy")
    for folder, needle in (("cf", "FIFO"), ("cz", "device")):
        old = _no_hang()
        try:
            rc, _, err = cli("m.onnx", "--collapse", "block.relu", "--calib", folder, "-o", "o.onnx", cwd=clf)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        one_line_error(rc, err, needle)
        assert not (clf / "o.onnx").exists() and not temps_in(clf)


_LABELS = {"ok": np.array([0, 1, 2, 0, 1]), "short": np.array([0, 1]), "float": np.zeros(5, np.float32),
           "nan": np.full(5, np.nan), "2d": np.zeros((5, 1), np.int64), "negative": np.array([0, -1, 2, 0, 1]),
           "too big": np.array([0, 1, 3, 0, 1]), "uint64 max": np.full(5, 2**64 - 1, np.uint64),
           "bool": np.ones(5, bool), "strings": np.array(["a"] * 5), "empty": np.zeros(0, np.int64), "missing": None}
_EVAL_X = {"ok": EVAL_X, "nan": np.full_like(EVAL_X, np.nan), "float64": EVAL_X.astype(np.float64),
           "int": EVAL_X.astype(np.int32), "wrong shape": EVAL_X[:, :2], "scalar": np.float32(1), "missing": None,
           "empty": EVAL_X[:0]}


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(labels=st.sampled_from(sorted(_LABELS)), x=st.sampled_from(sorted(_EVAL_X)),
       prune=st.booleans(), raw=st.sampled_from([None, None, None, b"", b"PK\x03\x04junk", b"\x93NUMPY garbage"]))
@example(labels="ok", x="ok", prune=True, raw=None)
@example(labels="ok", x="float64", prune=False, raw=None)
@example(labels="too big", x="ok", prune=False, raw=None)
def test_generated_eval_archives(tmp_path_factory, labels, x, prune, raw):
    d = tmp_path_factory.mktemp("ev")
    onnx.save(classifier_model(), d / "m.onnx")
    if raw is not None:
        (d / "e.npz").write_bytes(raw)
    else:
        arrays = {k: v for k, v in (("x", _EVAL_X[x]), ("labels", _LABELS[labels])) if v is not None}
        np.savez(d / "e.npz", **arrays)
    before = snapshot(d)
    argv = ["m.onnx", "--eval", "e.npz", "-o", "o.onnx"] + (["--prune-ratio", "0.25"] if prune else
                                                              ["--collapse", "block.relu"])
    rc, _, err = cli(*argv, cwd=d)
    assert_promise(rc, err, before, snapshot(d), {str(d / "o.onnx")})
    assert before[str(d / "e.npz")] == snapshot(d)[str(d / "e.npz")]
    good = raw is None and labels == "ok" and x in ("ok", "float64")
    assert (rc == 0) == good, err
    if rc == 2:
        assert "e.npz" in err and "calibration" not in err, err   # names the --eval file, not calibration data
    assert not temps_in(d)


_IMPORTANCE_DOCS = {
    "deep list": "[" * 100000 + "]" * 100000, "deep dict": '{"a":' * 100000 + "1" + "}" * 100000,
    "string": '{"/block/conv1/Conv": ["a", 1, 1, 1]}', "NaN": '{"/block/conv1/Conv": [NaN, 1, 1, 1]}',
    "inf": '{"/block/conv1/Conv": [1e999, 1, 1, 1]}', "null": '{"/block/conv1/Conv": [null, 1, 1, 1]}',
    "bool": '{"/block/conv1/Conv": [true, false, true, true]}', "nested": '{"/block/conv1/Conv": [[1], [2], [3], [4]]}',
    "unknown name": '{"/no/such/Conv": [1, 2, 3, 4]}', "empty list": '{"/block/conv1/Conv": []}',
    "int over float range": '{"/block/conv1/Conv": [%s, 1, 1, 1]}' % ("9" * 400), "not a dict": "[1, 2]",
    "broken": "{", "list value missing": '{"/block/conv1/Conv": 5}',
}


@pytest.mark.parametrize("doc", sorted(_IMPORTANCE_DOCS))
def test_bad_prune_importance_files_are_one_line(clf, doc):
    """Deep nesting was a RecursionError traceback, strings a ValueError; NaN, unknown names and the rest
    were silently ignored (those channels kept, no word)."""
    (clf / "bad.json").write_text(_IMPORTANCE_DOCS[doc])
    before = snapshot(clf)
    rc, _, err = cli("m.onnx", "--prune-ratio", "0.25", "--prune-importance", "bad.json", "-o", "o.onnx", cwd=clf)
    one_line_error(rc, err, "bad.json")
    assert snapshot(clf) == before


def test_good_prune_importance_file_by_node_or_tensor_name(clf):
    for name in ("/block/conv1/Conv", "h"):
        (clf / "imp.json").write_text(json.dumps({name: [4, 3, 2, 1]}))
        rc, _, err = cli("m.onnx", "--prune-ratio", "0.25", "--prune-importance", "imp.json", "-o", "o.onnx", cwd=clf)
        assert rc == 0, err


def test_error_messages_with_brackets_are_printed_verbatim(clf):
    """rich markup used to swallow '[scores...]' and '[one score per channel, ...]' from error lines."""
    (clf / "bad.json").write_text("[1, 2]")
    rc, _, err = cli("m.onnx", "--prune-ratio", "0.25", "--prune-importance", "bad.json", cwd=clf)
    one_line_error(rc, err, "[one score per channel, ...]")


@pytest.mark.parametrize("argv,needle", [
    (["--scores", "s.json", "--target-speedup", "inf"], "--target-speedup"),
    (["--scores", "s.json", "--target-speedup", "1e309"], "--target-speedup"),
    (["--scores", "s.json", "--target-speedup", "nan"], "--target-speedup"),
    (["--scores", "s.json", "--target-speedup", "0"], "--target-speedup"),
    (["--scores", "s.json", "--target-speedup", "-2"], "--target-speedup"),
    (["--target-speedup", "1.5"], "--scores"),
    (["--check", str(10**26)], "--check"),                    # was: a list of 1e26 inputs, memory exhausted
    (["--target", "cpu", "--tune-trials", str(2**31)], "--tune-trials"),   # was: TVM BigInt traceback
    (["--target", "cpu", "--tvm-repeat", str(10**20)], "--tvm-repeat"),    # was: a run that never ends
])
def test_new_flags_at_extremes_refused(work, argv, needle):
    before = snapshot(work)
    one_line_error(*cli("m.onnx", "--dry-run", *argv, cwd=work)[::2], needle)
    assert snapshot(work) == before


def test_a_ratio_prune_is_not_called_nothing(work):
    """`--prune-ratio` alone removed channels but stderr said the run changed nothing."""
    rc, _, err = cli("m.onnx", "--prune-ratio", "0.3", "-o", "o.onnx", cwd=work)
    assert rc == 0 and "collapsed, folded and merged nothing" not in err, err


def _main_thread_only():
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach Python handlers only in the main thread")


def test_signal_that_tvm_turns_into_an_error_is_reported_as_the_interruption(work, monkeypatch):
    """TVM's FFI turns the Interrupted raised in its callback into "TVM build for llvm failed: 15":
    that was exit 2 blaming TVM, with a report about a failure that was the user's SIGTERM."""
    hook = pytest.importorskip("tvm_integration.cli_hook")
    _main_thread_only()

    def interrupted_inside_tvm(args, original, collapsed, feeds, console=None):
        with pytest.raises(outputs.Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)   # delivered to the guard's handler here
            time.sleep(5)
        raise hook.TVMError("TVM build for llvm failed: 15")   # what the FFI hands back

    monkeypatch.setattr(hook, "run_from_args", interrupted_inside_tvm)
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "--target", "cpu", "-o", "o.onnx", "--report", "r.json",
                     cwd=work)
    assert rc == 143 and err.strip().splitlines()[-1] == "interrupted (SIGTERM); wrote o.onnx (model)", err
    assert not (work / "r.json").exists() and not temps_in(work)


def test_handlers_taken_over_at_the_c_level_are_rearmed():
    """LLVM (inside a TVM build) installs its own SIGINT/SIGTERM handlers with sigaction; they kill the
    process by the signal (exit -15, no cleanup, no message). The CLI re-installs its own after TVM."""
    import ctypes

    _main_thread_only()
    libc = ctypes.CDLL(None)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    with outputs.interrupt_guard():
        ignore = ctypes.c_void_p(1)            # SIG_IGN: a stand-in for a foreign C handler
        libc.signal(signal.SIGTERM, ignore)
        outputs.rearm_signal_handlers()
        with pytest.raises(outputs.Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
