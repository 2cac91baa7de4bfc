"""The CLI end to end, and every bad input: one-line error, non-zero exit, nothing written."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from collapse_passes.cli import main
from conftest import ROOT, make_model, rnd, vinfo


def small_model():
    c = 4
    inits = {"w1": rnd(c, c, 1, 1, seed=1), "b1": rnd(c, seed=2), "w2": rnd(c, c, 3, 3, seed=3)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="/block/conv1/Conv", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="/block/relu/Relu"),
             helper.make_node("Conv", ["r", "w2"], ["z"], name="/block/conv2/Conv", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["z"], ["y"], name="/out_act/Relu")]
    return make_model(nodes, [vinfo("x", [1, c, 6, 6])], [vinfo("y", [1, c, 6, 6])], inits)


@pytest.fixture
def model_path(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(small_model(), p)
    return p


def scores_file(tmp_path, scores, name="s.json"):
    p = tmp_path / name
    p.write_text(json.dumps({"scores": scores}))
    return p


def run_cli(*args):
    return main([str(a) for a in args])


def listing(d):
    return sorted(os.listdir(d))


def test_collapse_by_threshold_writes_default_output_and_report(tmp_path, model_path, capsys):
    s = scores_file(tmp_path, {"block.relu": 0.01, "out_act": 0.9})
    before = model_path.read_bytes()
    rc = run_cli(model_path, "--scores", s, "--threshold", "0.1", "--report", tmp_path / "r.json")
    assert rc == 0
    out = tmp_path / "m.collapsed.onnx"
    assert out.exists() and model_path.read_bytes() == before
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["collapsed"] == 1 and rep["passed"]
    assert [a["key"] for a in rep["activations"] if a["collapsed"]] == ["block.relu"]
    assert rep["after"]["depth_ops"] < rep["before"]["depth_ops"]
    assert not [f for f in listing(tmp_path) if f.endswith(".tmp")]
    text = capsys.readouterr().out
    assert "PASS" in text and "block.relu" in text


def test_remove_n_lowest(tmp_path, model_path):
    s = scores_file(tmp_path, {"block.relu": 0.3, "out_act": 0.2})
    assert run_cli(model_path, "--scores", s, "--remove", "1", "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.json") == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert [a["key"] for a in rep["activations"] if a["collapsed"]] == ["out_act"]


def test_node_name_keys_work_too(tmp_path, model_path):
    s = scores_file(tmp_path, {"/block/relu/Relu": 0.0})
    assert run_cli(model_path, "--scores", s, "--threshold", "0", "-o", tmp_path / "o.onnx") == 0
    assert "Relu" in [n.op_type for n in onnx.load(tmp_path / "o.onnx").graph.node]  # out_act kept


def test_without_scores_only_cleanups(tmp_path, model_path, capsys):
    assert run_cli(model_path, "-o", tmp_path / "o.onnx") == 0
    assert "nothing collapsed" in capsys.readouterr().out


def test_list_keys(model_path, capsys):
    assert run_cli(model_path, "--list-keys") == 0
    out = capsys.readouterr().out
    assert "block.relu" in out and "out_act" in out


def test_threshold_that_collapses_nothing_warns_but_succeeds(tmp_path, model_path, capsys):
    s = scores_file(tmp_path, {"block.relu": 0.5})
    assert run_cli(model_path, "--scores", s, "--threshold", "0.1", "-o", tmp_path / "o.onnx") == 0
    assert "collapses nothing" in capsys.readouterr().out


def test_dry_run_writes_nothing(tmp_path, model_path):
    s = scores_file(tmp_path, {"block.relu": 0.0})
    before = listing(tmp_path)
    assert run_cli(model_path, "--scores", s, "--threshold", "0", "--dry-run") == 0
    assert listing(tmp_path) == before


def test_verification_failure_writes_nothing_unless_forced(tmp_path, model_path, capsys):
    s = scores_file(tmp_path, {"block.relu": 0.0})
    out = tmp_path / "o.onnx"
    # an impossible tolerance makes the gate fail on float rounding of the merged kernel
    rc = run_cli(model_path, "--scores", s, "--threshold", "0", "-o", out, "--rtol", "0", "--atol", "0")
    err = capsys.readouterr().err
    if rc == 0:
        pytest.skip("merge happened to be bit-exact")
    assert rc == 1 and "verification failed" in err and not out.exists()
    assert run_cli(model_path, "--scores", s, "--threshold", "0", "-o", out, "--rtol", "0", "--atol", "0", "--force") == 0
    assert out.exists()


# ------------------------------------------------------------------------------ bad input

def assert_bad(capsys, rc, *needles, code=2):
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert err.startswith("error:"), err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)


def test_not_an_onnx_file(tmp_path, capsys):
    p = tmp_path / "junk.onnx"
    p.write_text("hello, I am not a model\n" * 10)
    assert_bad(capsys, run_cli(p), "junk.onnx")
    assert listing(tmp_path) == ["junk.onnx"]


def test_truncated_file(tmp_path, model_path, capsys):
    data = model_path.read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    assert_bad(capsys, run_cli(p), "cut.onnx")
    assert not (tmp_path / "cut.collapsed.onnx").exists()


def test_missing_and_unreadable_path(tmp_path, model_path, capsys):
    assert_bad(capsys, run_cli(tmp_path / "nope.onnx"), "no such file")
    if os.geteuid() != 0:
        os.chmod(model_path, 0)
        assert_bad(capsys, run_cli(model_path), "not readable")
    assert_bad(capsys, run_cli(tmp_path), "directory")


def test_scores_not_json_or_without_scores(tmp_path, model_path, capsys):
    p = tmp_path / "s.json"
    p.write_text("{not json")
    assert_bad(capsys, run_cli(model_path, "--scores", p, "--threshold", "0"), "not valid JSON")
    p.write_text(json.dumps({"layers": {}}))
    assert_bad(capsys, run_cli(model_path, "--scores", p, "--threshold", "0"), '"scores"')
    assert_bad(capsys, run_cli(model_path, "--scores", tmp_path / "missing.json", "--threshold", "0"), "not found")


def test_unknown_key_lists_near_matches(tmp_path, model_path, capsys):
    s = scores_file(tmp_path, {"block.relu2": 0.0})
    assert_bad(capsys, run_cli(model_path, "--scores", s, "--threshold", "0"), "block.relu2", "did you mean", "block.relu")
    assert not (tmp_path / "m.collapsed.onnx").exists()


@pytest.mark.parametrize("value", ["NaN", '"low"', "null", "true"])
def test_nan_or_non_numeric_scores(tmp_path, model_path, capsys, value):
    p = tmp_path / "s.json"
    p.write_text('{"scores": {"block.relu": %s}}' % value)
    assert_bad(capsys, run_cli(model_path, "--scores", p, "--threshold", "0"), "block.relu")


def test_output_equal_to_input_refused(model_path, capsys):
    before = model_path.read_bytes()
    assert_bad(capsys, run_cli(model_path, "-o", model_path), "is the input model")
    assert model_path.read_bytes() == before


def test_missing_external_data(tmp_path, capsys):
    m = small_model()
    p = tmp_path / "ext.onnx"
    onnx.save(m, p, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    os.remove(tmp_path / "ext.data")
    assert_bad(capsys, run_cli(p), "ext.data", "missing")


def test_external_data_present_loads(tmp_path):
    m = small_model()
    p = tmp_path / "ext.onnx"
    onnx.save(m, p, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    assert run_cli(p, "-o", tmp_path / "o.onnx") == 0


def test_unknown_ops_left_alone_and_listed(tmp_path, capsys):
    c = 3
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], kernel_shape=[1, 1]),
             helper.make_node("Softplus", ["h"], ["s"], name="sp"),
             helper.make_node("Relu", ["s"], ["y"], name="act")]
    m = make_model(nodes, [vinfo("x", [1, c, 4, 4])], [vinfo("y", [1, c, 4, 4])], {"w": rnd(c, c, 1, 1)})
    p = tmp_path / "u.onnx"
    onnx.save(m, p)
    assert run_cli(p, "--collapse", "act", "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.json") == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["left_alone"] == ["Softplus"]
    assert "Softplus" in [n.op_type for n in onnx.load(tmp_path / "o.onnx").graph.node]
    assert "left alone" in capsys.readouterr().out


def test_threshold_and_remove_are_exclusive(tmp_path, model_path):
    with pytest.raises(SystemExit) as e:
        run_cli(model_path, "--threshold", "0", "--remove", "1")
    assert e.value.code == 2


def test_python_dash_m_entry_point(tmp_path, model_path):
    s = scores_file(tmp_path, {"block.relu": 0.0})
    r = subprocess.run([sys.executable, "-m", "collapse_passes", str(model_path), "--scores", str(s), "--threshold", "0",
                        "-o", str(tmp_path / "o.onnx"), "-q"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("o.onnx")
    r = subprocess.run([sys.executable, "-m", "collapse_passes", str(tmp_path / "missing.onnx")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_gate_on_calibration_data(tmp_path, model_path, capsys):
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((4, 4, 6, 6)).astype(np.float32))
    s = scores_file(tmp_path, {"block.relu": 0.0})
    assert run_cli(model_path, "--scores", s, "--threshold", "0", "--calib", tmp_path / "c.npz", "-o", tmp_path / "o.onnx") == 0
    assert "calibration data (4 samples)" in capsys.readouterr().out.replace("\n", " ")


@pytest.mark.parametrize("arrays,needle", [
    ({"wrong": np.zeros((2, 4, 6, 6), np.float32)}, "no array named 'x'"),
    ({"x": np.zeros((2, 3, 6, 6), np.float32)}, "expected 4"),
    ({"x": np.zeros((2, 4, 6, 6), np.int32)}, "dtype"),
    ({"x": np.full((2, 4, 6, 6), np.nan, np.float32)}, "NaN"),
])
def test_bad_calibration_for_the_gate(tmp_path, model_path, capsys, arrays, needle):
    np.savez(tmp_path / "c.npz", **arrays)
    assert_bad(capsys, run_cli(model_path, "--calib", tmp_path / "c.npz", "-o", tmp_path / "o.onnx"), needle)
    assert not (tmp_path / "o.onnx").exists()


def test_usage_errors_are_one_line_exit_2(model_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(model_path, "--check", "many")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error:") and "--check" in err


def test_quiet_prints_only_the_output_path(tmp_path, model_path, capsys):
    assert run_cli(model_path, "--collapse", "block.relu", "-o", tmp_path / "o.onnx", "-q") == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "o.onnx")


def test_verification_failure_writes_only_the_report(tmp_path, model_path, capsys):
    rc = run_cli(model_path, "--collapse", "block.relu", "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.json",
                 "--rtol", "0", "--atol", "0")
    if rc == 0:
        pytest.skip("merge happened to be bit-exact")
    err = capsys.readouterr().err
    assert rc == 1 and "only the report was written" in err
    assert not (tmp_path / "o.onnx").exists() and json.loads((tmp_path / "r.json").read_text())["passed"] is False
