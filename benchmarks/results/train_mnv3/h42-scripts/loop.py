"""H42: iterative_collapse on digits MNv3-Small / EffNet-B0, then export (both exporters) + CLI collapse with --eval."""
import argparse, json, os, sys, time, copy, subprocess, warnings, io, contextlib
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/tmp/H42")
import numpy as np, torch
from dense import dense, data, CFG
from collapse_passes.train import iterative_collapse, find_sites
from collapse_passes.scores.torch_hooks import module_scores

ap = argparse.ArgumentParser()
ap.add_argument("model"); ap.add_argument("method")
ap.add_argument("--rounds", type=int, default=6); ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--drop", type=float, default=0.01); ap.add_argument("--patience", type=int, default=1)
ap.add_argument("--prefer", action="store_true"); ap.add_argument("--tag", default="")
a = ap.parse_args()
torch.set_num_threads(1)
out = f"/tmp/H42/{a.model}-{a.method}{a.tag}"; os.makedirs(out, exist_ok=True)
x, y, xv, yv, xt, yt = data(a.model)
m = dense(a.model)
sites = find_sites(m)
print("sites", len(sites), [s.key for s in sites][:60])
# dense scores with details (HardSwish p_band)
sc = module_scores(m, a.method, calib_batches=[x[i:i+64] for i in range(0, 256, 64)], calib_arg="train_data")
rank = sorted(sc.scores.items(), key=lambda kv: kv[1])
json.dump({"scores": sc.scores, "details": {k: {kk: vv for kk, vv in d.items() if not isinstance(vv, list)} for k, d in sc.details.items()}}, open(f"{out}/dense_scores.json", "w"), indent=1, default=str)
print("dense ranking (lowest 12):")
for k, v in rank[:12]:
    d = sc.details.get(k, {})
    print(f"  {k:40s} {v:.4f} kind={d.get('kind')} frac_curved={d.get('frac_curved')} frac_linear={d.get('frac_linear')} frac_dead={d.get('frac_dead')}")
t0 = time.time()
res = iterative_collapse(m.eval(), method=a.method, train_data=(x, y), val_data=(xv, yv), max_accuracy_drop=a.drop,
                         max_rounds=a.rounds, steps_per_round=a.steps, lr=5e-4, patience=a.patience,
                         prefer_speedup=a.prefer, group_sites=a.prefer,
                         log=lambda s: print("  [loop]", s, flush=True))
dt = time.time() - t0
with torch.no_grad():
    acc_d_val = (m.eval()(xv).argmax(1) == yv).float().mean().item()
    acc_c_val = (res.model.eval()(xv).argmax(1) == yv).float().mean().item()
    acc_d = (m(xt).argmax(1) == yt).float().mean().item()
    acc_c = (res.model(xt).argmax(1) == yt).float().mean().item()
print(f"loop {dt:.0f}s stopped={res.stopped} collapsed={res.collapsed}")
print(f"report baseline={res.baseline_accuracy:.4f} accuracy={res.accuracy:.4f} predicted={res.predicted_speedup}")
print(f"recomputed val dense={acc_d_val:.4f} collapsed={acc_c_val:.4f}; test dense={acc_d:.4f} collapsed={acc_c:.4f}")
print("notes", res.notes)
torch.save(res.model, f"{out}/collapsed_model.pt")
json.dump(dict(history=res.history, collapsed=res.collapsed, stopped=res.stopped, baseline=res.baseline_accuracy,
               accuracy=res.accuracy, predicted=res.predicted_speedup, recomputed=dict(val_dense=acc_d_val, val_coll=acc_c_val,
               test_dense=acc_d, test_coll=acc_c), notes=res.notes, seconds=dt), open(f"{out}/loop.json", "w"), indent=1, default=str)
np.savez(f"{out}/test.npz", input=xt.numpy(), labels=yt.numpy())
from models.export import export_onnx
shape = (1,) + tuple(x.shape[1:])
for dyn in (False, True):
    for nm, mod in (("dense", m), ("coll", res.model)):
        p = f"{out}/{nm}-{'dynamo' if dyn else 'ts'}.onnx"
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                export_onnx(copy.deepcopy(mod).eval(), p, shape, dynamo=dyn)
            print("exported", p)
        except Exception as e:
            print("EXPORT FAIL", p, type(e).__name__, str(e)[:300])
