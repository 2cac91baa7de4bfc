"""Train dense digits models (held-out val split) for H42's checks; cache under /tmp/H42."""
import os, sys, time, torch
sys.path.insert(0, "/work/main")
from models import build
from models.digits import load_digits_tensors, fit_digits

CFG = {
 "mobilenet_v3_small": dict(model_kw=dict(num_classes=10, in_channels=1, width_mult=0.5), size=32, channels=1, epochs=12, lr=5e-3, batch_size=64),
 "efficientnet_b0": dict(model_kw=dict(num_classes=10, in_channels=1, width_mult=0.25, depth_mult=0.34), size=32, channels=1, epochs=12, lr=5e-3, batch_size=64),
}
N_VAL = 300

def data(name):
    c = CFG[name]
    x_tr, y_tr, x_te, y_te = load_digits_tensors(c["size"], c["channels"])
    perm = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(0))
    val, tr = perm[:N_VAL], perm[N_VAL:]
    return x_tr[tr], y_tr[tr], x_tr[val], y_tr[val], x_te, y_te

def recal(m, x):
    """BN running stats = the training data's (momentum 0.01 of torchvision's MNv3 lags far behind after 240 steps)."""
    bns = [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    moms = [b.momentum for b in bns]
    for b in bns: b.reset_running_stats(); b.momentum = None
    m.train()
    with torch.no_grad():
        for i in range(0, len(x), 64): m(x[i:i+64])
    for b, mo in zip(bns, moms): b.momentum = mo
    m.eval()

def dense(name):
    path = f"/tmp/H42/{name}-dense.pt"
    torch.manual_seed(0)
    m = build(name, **CFG[name]["model_kw"])
    if os.path.exists(path):
        m.load_state_dict(torch.load(path, weights_only=True)); return m.eval()
    x, y, xv, yv, xt, yt = data(name)
    torch.manual_seed(0); m = build(name, **CFG[name]["model_kw"])
    t0 = time.time(); fit_digits(m, x, y, CFG[name], seed=0, verbose=True, name=name)
    recal(m, x)
    m.eval()
    with torch.no_grad():
        print(name, "val", (m(xv).argmax(1) == yv).float().mean().item(), "test", (m(xt).argmax(1) == yt).float().mean().item(), f"{time.time()-t0:.0f}s")
    torch.save(m.state_dict(), path + ".tmp"); os.replace(path + ".tmp", path)
    return m

if __name__ == "__main__":
    torch.set_num_threads(1)
    for n in sys.argv[1:]:
        dense(n)
