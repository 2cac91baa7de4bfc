"""Training terms that drive layers toward linear, and the edits that follow them.

- Layer Folding (Ben Dror et al., BMVC 2022): ReLU-like sites become PReLU (one slope, started at
  the activation's negative slope) and the loss gets lambda * sum |1 - alpha^2|; a site whose slope
  reaches FOLD_ALPHA is folded (collapsed to identity), exactly when alpha is 1.
- LaCoOT (Quétu et al., ICCV 2025): lambda * mean over residual blocks of the max-sliced
  Wasserstein distance between block input and output (each sample's flattened map one point);
  blocks whose distance falls low are then replaced by their skip (removed).
"""
from __future__ import annotations

import operator

import torch
from torch import nn

from ..errors import CollapseError
from .sites import _set_module, find_sites, replace_calls, share_hooks

FOLD_ALPHA = 0.9
_TO_PRELU = ("relu", "relu6", "leaky_relu")


# ------------------------------------------------------------------------------------ Layer Folding

def _prelu(site, old: nn.Module | None = None, origin: str | None = None) -> nn.PReLU:
    # a slope of 0 is a stationary point of |1 - alpha^2|: ReLUs start as LeakyReLU(0.01)
    init = float(site.params.get("alpha", 0.0)) if site.kind == "leaky_relu" else 0.0
    m = share_hooks(nn.PReLU(1, init=init if init != 0.0 else 0.01), old)
    if origin:
        m._origin_key = origin   # find_sites / the loop name this site by the shared module's call key
    return m


def prelu_swap(model: nn.Module, whole_model: bool = True) -> tuple[nn.Module, list[str]]:
    """Swap every ReLU / ReLU6 / LeakyReLU call site for a 1-slope nn.PReLU started at its negative slope
    (ReLU6 loses its cap at 6: Layer Folding's parametrisation has none), keeping the user's hooks. A
    module called several times (torchvision's BasicBlock.relu) gets one PReLU per call, each with its
    own slope, as Layer Folding learns one per layer (sites.replace_calls: the block is re-traced; the
    model itself only when its root issues the calls, whole_model=False leaves those). Returns (model,
    swapped: module paths / call keys); the model is the same object unless the whole of it was traced."""
    done, shared = [], []
    sites = find_sites(model)
    for s in sites:
        if s.kind not in _TO_PRELU:
            continue
        if s.calls == 1:
            _set_module(model, s.path, _prelu(s, model.get_submodule(s.path)), keep={t.path for t in sites})
            done.append(s.path)
        else:
            shared.append(s)
    if shared:
        try:
            model = replace_calls(model, shared, lambda s, old: _prelu(s, old, s.key), name="prelu_",
                                  whole_model=whole_model)
        except CollapseError:   # does not trace: those calls keep their activation
            pass
        want = {s.key for s in shared}
        done += [t.origin for t in find_sites(model) if t.origin in want]
    return model, done


def to_prelu(model: nn.Module) -> list[str]:
    """prelu_swap in place (a module called several times from the root forward is left as it is);
    returns the paths / call keys swapped."""
    return prelu_swap(model, whole_model=False)[1]


def prelu_modules(model: nn.Module) -> dict[str, nn.PReLU]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.PReLU)}


def prelu_penalty(model: nn.Module) -> torch.Tensor:
    """sum over PReLU slopes of |1 - alpha^2| (Layer Folding's term; 0 when every slope is +-1)."""
    terms = [(1.0 - m.weight ** 2).abs().sum() for m in prelu_modules(model).values()]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


@torch.no_grad()
def clamp_slopes(model: nn.Module) -> None:
    """Keep PReLU slopes in [0, 1] after each step: |1 - alpha^2| has a second minimum at -1, where
    PReLU is |x| (not linear), and slopes left free drift there."""
    for m in prelu_modules(model).values():
        m.weight.clamp_(0.0, 1.0)


def prelu_score(mod: nn.PReLU) -> float:
    """mean |1 - alpha| (the prelu score: 0 = identity)."""
    return float((1.0 - mod.weight.detach()).abs().mean())


# ------------------------------------------------------------------------------------ LaCoOT

def max_sliced_w2(x: torch.Tensor, y: torch.Tensor, directions: int = 64,
                  generator: torch.Generator | None = None, refine_steps: int = 10) -> torch.Tensor:
    """Max-sliced W_2 between the rows of x and y (flattened per sample), searched in their span.

    W_2 along theta depends on theta only through theta . x_i and theta . y_i, so the max over unit
    directions lies in S = span{x_i, y_i} (dim <= 2n): a random direction of the whole R^d has only
    ~sqrt(2n / d) of its length there and sees that fraction of the distance (the former estimator).
    The search runs on the 2n x 2n Gram matrix of Z = [x; s (y - x)] (s scales the branch to the inputs'
    norm, as in scores/lacoot.py): directions theta = Z^T c for `directions` seeded Gaussian c, plus the
    mean- and top paired-difference directions; the best few get `refine_steps` power steps on the
    sorted matching (scores.lacoot._refine's step, written on coefficients). The chosen direction is
    held fixed and W_2 along it is the differentiable value: by Danskin's theorem that is the gradient
    of the max. Cost O(n^2 d) for the Gram matrix, then O(n^2) per direction, whatever d."""
    x = x.flatten(1)
    y = y.flatten(1)
    with torch.no_grad():
        theta = _span_direction(x.detach(), y.detach(), directions, generator, refine_steps)
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    m = ((px - py) ** 2).mean()
    # sqrt with a zero gradient at 0 (an exact identity block), not 0 * inf = nan
    return torch.where(m > 0, torch.where(m > 0, m, torch.ones_like(m)).sqrt(), torch.zeros_like(m))


_SEARCH_STARTS = 4


def _span_direction(x: torch.Tensor, y: torch.Tensor, k: int, generator, steps: int) -> torch.Tensor:
    """A unit direction of R^d in the span of the rows of x and y with (near) the largest W_2 (no grad)."""
    n = x.shape[0]
    dt = torch.float32 if x.device.type == "mps" else torch.float64
    if x.dtype not in (torch.float32, torch.float64):            # half precision: the Gram matrix in float32
        x, y = x.float(), y.float()
    d = y - x
    sx, sd = x.norm(), d.norm()
    s = torch.where((sx > 0) & (sd > 0), sx / sd.clamp_min(torch.finfo(x.dtype).tiny), torch.ones_like(sx))
    z = torch.cat([x, s * d])                                    # 2n x d: its row space is S
    g = (z @ z.T).to(dt)                                         # Gram matrix, 2n x 2n
    s = s.to(dt)

    def projections(c):   # c: 2n x m coefficients -> (theta . x_i, theta . y_i), n x m each, theta unit
        p = g @ c
        norm = (c * p).sum(0).clamp_min(0).sqrt()
        norm = torch.where(norm > 0, norm, torch.ones_like(norm))
        a = p[:n] / norm
        return a, a + p[n:] / (s * norm)

    def w2(c):
        a, b = projections(c)
        return ((a.sort(0)[0] - b.sort(0)[0]) ** 2).mean(0)

    # no host sync on the way: starts, search and choice stay tensors on x's device
    zeros = torch.zeros(n, dtype=dt, device=g.device)
    mean_diff = torch.cat([zeros, torch.ones_like(zeros)])       # theta = s (y - x)^T 1: the mean difference
    gdd = g[n:, n:]                                              # top right singular vector of y - x: power steps
    v = torch.nn.functional.one_hot(torch.diagonal(gdd).argmax(), n).to(dt)
    for _ in range(30):
        v = gdd @ v
        v = v / v.norm().clamp_min(torch.finfo(dt).tiny)
    rand = torch.randn(2 * n, k, generator=generator, dtype=torch.float64).to(device=g.device, dtype=dt)
    c = torch.cat([torch.stack([mean_diff, torch.cat([zeros, v])], 1), rand], 1)
    w = w2(c)
    top = torch.argsort(w, descending=True, stable=True)[:_SEARCH_STARTS]
    c, w = c[:, top], w[top]
    best_c, best_w = c, w
    for _ in range(steps):   # theta <- sum_i (x_s(i) - y_t(i)) gap_i = X^T (p - q) - D^T q on the sorted matching
        a, b = projections(c)
        sa, sb = a.argsort(0), b.argsort(0)
        gap = a.gather(0, sa) - b.gather(0, sb)
        p = torch.zeros_like(a).scatter_(0, sa, gap)
        q = torch.zeros_like(b).scatter_(0, sb, gap)
        c = torch.cat([p - q, -q / s])
        w = w2(c)
        better = w > best_w
        best_c = torch.where(better, c, best_c)
        best_w = torch.where(better, w, best_w)
    cbest = best_c.index_select(1, best_w.argmax().reshape(1))[:, 0].to(x.dtype)
    theta = z.T @ cbest
    return theta / theta.norm().clamp_min(torch.finfo(x.dtype).tiny)


class _OwnForward(torch.fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return True


def residual_blocks(model: nn.Module) -> list[str]:
    """Paths of submodules whose forward adds their own input to something (y = F(x) + x), found with
    torch.fx on each submodule; outermost first, nested ones skipped."""
    out = []
    for path, m in model.named_modules():
        if not path or any(path.startswith(p + ".") for p in out) or not list(m.children()):
            continue
        try:   # the module's own forward only: children are leaves (a Sequential of blocks is no block)
            gm = torch.fx.GraphModule(m, _OwnForward().trace(m))
        except Exception:  # noqa: BLE001 - untraceable submodule: not a block we can see
            continue
        ph = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(ph) != 1:
            continue
        same = {ph[0]}   # the input, also through nn.Identity (torchvision-style `shortcut = nn.Identity()`)
        subs = dict(gm.named_modules())
        for n in gm.graph.nodes:
            if n.op == "call_module" and isinstance(subs.get(n.target), nn.Identity) and n.args and n.args[0] in same:
                same.add(n)
            if n.op == "call_function" and n.target in (operator.add, torch.add, operator.iadd) \
                    and any(a in same for a in n.args):
                out.append(path)
                break
    return out


class LacootTerm:
    """Forward hooks that record each block's input and output; .penalty() gives mean MSWD over the
    blocks of the last forward (divided by the input RMS, as the scores are). Use as a context."""

    def __init__(self, model: nn.Module, blocks: list[str] | None = None, directions: int = 64, seed: int = 0):
        self.blocks = residual_blocks(model) if blocks is None else list(blocks)
        if not self.blocks:
            raise CollapseError("LaCoOT: no residual block (a submodule computing F(x) + x) found; "
                                "give blocks=[module paths], or leave lacoot_lambda at 0 and remove_blocks_below at None")
        self.model, self.directions = model, directions
        self.gen = torch.Generator().manual_seed(seed)
        self.seen: dict[str, tuple] = {}
        self.handles = []

    def __enter__(self):
        for p in self.blocks:
            self.handles.append(self.model.get_submodule(p).register_forward_hook(self._hook(p)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def _hook(self, path):
        def hook(mod, inputs, output):
            if inputs and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor) \
                    and inputs[0].shape == output.shape:
                self.seen[path] = (inputs[0], output)
        return hook

    def penalty(self) -> torch.Tensor:
        terms = []
        for x, y in self.seen.values():
            rms = x.detach().flatten(1).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
            terms.append(max_sliced_w2(x, y, self.directions, self.gen) / rms)
        self.seen = {}
        return torch.stack(terms).mean() if terms else torch.zeros(())

    @torch.no_grad()
    def block_scores(self, batches) -> dict[str, float]:
        """Mean normalised MSWD per block over input batches (model in eval mode)."""
        sums: dict[str, list] = {}
        was = self.model.training
        self.model.eval()
        try:
            with self:
                for xb in batches:
                    self.model(xb)
                    for p, (x, y) in self.seen.items():
                        rms = x.flatten(1).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
                        sums.setdefault(p, []).append(float(max_sliced_w2(x, y, 256, self.gen) / rms))
                    self.seen = {}
        finally:
            self.model.train(was)
        return {p: sum(v) / len(v) for p, v in sums.items()}


def remove_blocks(model: nn.Module, paths) -> nn.Module:
    """Replace whole residual blocks by their skip (identity). In place. A path that names no submodule
    (or a bare string, which would be read letter by letter) is one CollapseError, before any change."""
    if isinstance(paths, (str, bytes)) or not hasattr(paths, "__iter__"):
        raise CollapseError(f"remove_blocks: give a list of module paths, got {type(paths).__name__} {paths!r}")
    paths = list(paths)
    for p in paths:
        try:
            ok = isinstance(p, str) and bool(p) and model.get_submodule(p) is not None
        except AttributeError:
            ok = False
        if not ok:
            raise CollapseError(f"remove_blocks: {p!r} names no submodule of the model; give residual blocks' paths "
                                "(model.named_modules() names)")
    for p in paths:
        _set_module(model, p, nn.Identity())
    return model
