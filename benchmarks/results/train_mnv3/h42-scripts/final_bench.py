"""H42 2026-11-29: MobileNetV3-Small / EfficientNet-B0 digits, iterative_collapse results + ORT latency (flock'd)."""
import sys, json, os, platform, numpy as np, onnx
sys.path.insert(0, "/work/main")
from collapse_passes.core.runtime import session, time_interleaved
out = {}
for run in sys.argv[2:]:
    d = f"/tmp/H42/{run}"
    L = json.load(open(f"{d}/loop.json"))
    t = np.load(f"{d}/test.npz"); feed = {"input": t["input"][:1]}
    reps = {n: json.load(open(f"{d}/{n}-ts.report.json")) for n in ("dense", "coll")}
    lat = {}
    for th in (1, None):
        s = {"dense": session(onnx.load(f"{d}/dense-ts.out.onnx"), optimize=True, threads=th),
             "collapsed": session(onnx.load(f"{d}/coll-ts.out.onnx"), optimize=True, threads=th)}
        tt = time_interleaved(s, feed, int(sys.argv[1]))
        ms = {k: 1e3 * float(np.median(v)) for k, v in tt.items()}
        q = {k: [1e3 * float(np.percentile(v, p)) for p in (25, 75)] for k, v in tt.items()}
        lat[f"threads={th or 'ort default'}"] = dict(ms=ms, iqr_ms=q, speedup=ms["dense"] / ms["collapsed"])
    out[run] = dict(collapsed=L["collapsed"], stopped=L["stopped"], history=L["history"],
                    val_before=L["baseline"], val_after=L["accuracy"], test_before=L["recomputed"]["test_dense"],
                    test_after=L["recomputed"]["test_coll"],
                    onnx_test_acc_dense=reps["dense"]["accuracy"]["result"], onnx_test_acc_collapsed=reps["coll"]["accuracy"]["result"],
                    depth_ops=[reps["dense"]["after"]["depth_ops"], reps["coll"]["after"]["depth_ops"]],
                    macs=[reps["dense"]["after"]["macs"], reps["coll"]["after"]["macs"]],
                    predicted_speedup=L["predicted"], loop_seconds=L["seconds"], latency=lat)
    print(run, {k: v for k, v in out[run].items() if k not in ("history",)})
out["_meta"] = dict(machine=f"{platform.machine()} {os.cpu_count()} cores, shared with other helpers (noisy)",
                    load=os.getloadavg(), rounds=int(sys.argv[1]), how="ORT CPU batch 1, interleaved, spinning off, median; dense and collapsed both after the CLI's exact clean-ups (TorchScript export)")
os.makedirs("/work/main/benchmarks/results/train_mnv3", exist_ok=True)
json.dump(out, open(os.environ.get("OUTJSON", "/work/main/benchmarks/results/train_mnv3/h42-2026-11-29.json"), "w"), indent=1, default=str)
