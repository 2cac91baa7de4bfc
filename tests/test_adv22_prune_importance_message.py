"""--prune-importance tlc without --calib on a model with no BatchNorm left: the one line names the option the user
gave (it said "--method tlc", which they did not give), as --prune-importance easier already did."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prune_importance_tlc_without_calib_names_the_option_given(tmp_path):
    out = tmp_path / "o.onnx"
    p = subprocess.run([sys.executable, "-m", "collapse_passes", os.path.join(ROOT, "models", "examples", "mobilenet_v2_digits.onnx"),
                        "--prune-ratio", "0.3", "--prune-importance", "tlc", "-o", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and not out.exists()
    assert err[0].startswith("error: --prune-importance tlc: ") and "--method" not in err[0] and "--calib" in err[0]
