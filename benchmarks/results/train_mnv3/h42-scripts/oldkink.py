"""EASIER entropy of MNv3 HardSwish sites with the old kink (0) vs the new scores (band half on/off)."""
import sys, json, torch, numpy as np
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/tmp/H42")
from dense import dense, data
torch.set_num_threads(1)
x, *_ = data("mobilenet_v3_small"); m = dense("mobilenet_v3_small")
new = json.load(open("/tmp/H42/mobilenet_v3_small-easier/dense_scores.json"))["scores"]
acc = {}
def hook(name):
    def f(mod, inp, out):
        t = inp[0].detach(); t = t.transpose(0, 1).reshape(t.shape[1], -1)
        acc.setdefault(name, []).append(t)
    return f
for n, mod in m.named_modules():
    if isinstance(mod, torch.nn.Hardswish): mod.register_forward_hook(hook(n))
with torch.no_grad():
    for i in range(0, 256, 64): m(x[i:i+64])
def H(p): p = np.clip(p, 1e-12, 1-1e-12); return float(np.mean(-(p*np.log2(p)+(1-p)*np.log2(1-p))))
rows = []
for n, ts in acc.items():
    t = torch.cat(ts, 1).numpy()
    p0 = (t >= 0).mean(1)
    inband_pos = ((t >= 0) & (t < 3)).mean(1)
    rows.append((H(p0), n, new.get(n), float((inband_pos > 0.99).mean())))
for r in sorted(rows): print(f"{r[1]:28s} old(kink 0) {r[0]:.3f}  new {r[2]:.3f}  frac channels all in [0,3): {r[3]:.2f}")
