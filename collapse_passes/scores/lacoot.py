"""LaCoOT (Quétu et al., ICCV 2025): how far a residual block moves its input distribution.

For each residual block y = F(x) + x (onnx.blocks.find_residual_blocks) every calibration sample's
flattened block input x_i and block output y_i is one point in R^d. The score is the max-sliced
Wasserstein distance between the two point sets,

    MSWD = max over unit theta of W_2(theta . X, theta . Y),
    W_2 between equal-size 1-D sets = sqrt(mean((sort(a) - sort(b))^2))   (p = 2),

normalised by the RMS norm of the input points, sqrt(mean_i |x_i|^2), so blocks of different
width and scale compare. Since the paired coupling bounds W_2 along any theta, the score is at most
the relative branch energy sqrt(mean |F(x_i)|^2) / sqrt(mean |x_i|^2) (reported as
relative_branch_rms). A low score means the block is close to the identity and can be dropped
whole (--remove-blocks T replaces it by its skip).

Where the max lies: W_2 along theta depends on theta only through theta . x_i and theta . y_i, so with
theta = a + b, a in S = span{x_i, y_i}, b orthogonal to S, W_2(theta) = |a| W_2(a / |a|): the max over
unit directions is attained in S (dimension <= 2n for n samples). The points are given coordinates
in an orthonormal basis of S that keep every inner product (span_coordinates: from their 2n x 2n Gram
matrix; the points themselves when d <= 8n), and the search runs there at O(n r) per direction instead
of O(n d): N_DIRECTIONS seeded Gaussian directions of R^r plus the mean-difference and the top
paired-difference directions, the best REFINE_STARTS refined by power steps on the sorted matching
(accepted only while W_2 grows). A random direction of the whole R^d has only about sqrt(2n / d) of
its length in S: the former full-space search underestimated the max by about that factor at high d
(tests/test_lacoot_span.py). Deterministic for a fixed calibration set and seed.

Memory: the points of all blocks are kept while they fit in POINT_BUDGET_BYTES. Over it the last
blocks (model order) are left to a further pass over the calibration data, and a block whose points
alone exceed it is kept one slice of features at a time, its Gram matrix summed over the passes (the
Gram matrix is a sum over features; when d <= OWN_COORDINATES n the slices themselves are joined).
Every pass runs the model over the calibration set again; the scores are those of one pass (to
rounding).

The block output is the Add output: a post-add ReLU belongs to the next layer, and removing the
block keeps it. Blocks whose skip is a projection (the input and output spaces differ) get no score.
"""
from __future__ import annotations

import numpy as np

from ..errors import CollapseError
from ..onnx.blocks import find_residual_blocks
from ..onnx.graph import node_key_names, to_graph
from ._common import ScoreResult, require_calib, tapped_batches

N_DIRECTIONS = 256
SEED = 0
REFINE_STEPS = 100
#: the best this many start directions (random, mean- and paired-difference) are refined
REFINE_STARTS = 8
#: the kept calibration points (all blocks of a pass together) take at most about this many bytes
POINT_BUDGET_BYTES = 512 << 20
#: two points per distribution is the least that defines a distance; 32+ recommended (a note says so)
MIN_SAMPLES = 2
#: a block with d <= OWN_COORDINATES * n features is searched in its own coordinates (r = d), not its span's
OWN_COORDINATES = 8
#: the float64 temporaries of a Gram matrix chunk stay under this many bytes
_GROUP_BYTES = 32 << 20


def w2_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """W_2 between the columns of a and b (equal numbers of rows) along axis 0."""
    sa = np.sort(a, axis=0)
    sb = np.sort(b, axis=0)
    return np.sqrt(np.mean((sa - sb) ** 2, axis=0))


def add_gram(gram: np.ndarray | None, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """gram + the Gram matrix of the rows of [x; y - x] (2n x 2n, float64), summed over feature chunks
    (one matrix product each, O(d n^2)). x and y may be a slice of the features: the Gram matrix of
    all features is the sum over slices."""
    n, d = x.shape
    gram = np.zeros((2 * n, 2 * n)) if gram is None else gram
    width = max(1, _GROUP_BYTES // (16 * n))
    for lo in range(0, d, width):
        xc = x[:, lo:lo + width].astype(np.float64)
        z = np.concatenate([xc, y[:, lo:lo + width] - xc])
        gram += z @ z.T
    return gram


def gram_coordinates(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cx, cy), n x 2n each, from the Gram matrix of [x; y - x] (add_gram): the points in an orthonormal
    basis of their span, every inner product kept. The differences are scaled to the norm of the inputs
    first (the same span), so that a small branch keeps its relative precision; the eigendecomposition
    costs O(n^3), whatever d."""
    n = gram.shape[0] // 2
    gram = gram.copy()
    sx, sd = np.sqrt(np.trace(gram[:n, :n])), np.sqrt(np.trace(gram[n:, n:]))
    s = sx / sd if sd > 0 and sx > 0 else 1.0
    gram[n:, :n] *= s
    gram[:n, n:] *= s
    gram[n:, n:] *= s * s
    lam, vec = np.linalg.eigh(gram)
    lam, vec = lam[::-1], vec[:, ::-1]
    # each eigenvector signed so that its largest entry is positive: one basis whatever the summation
    # order, so the seeded directions of span_search mean the same directions
    vec = vec * np.where(vec[np.abs(vec).argmax(axis=0), np.arange(2 * n)] < 0, -1.0, 1.0)
    c = vec * np.sqrt(np.clip(lam, 0.0, None))
    return c[:n], c[:n] + c[n:] / s


def span_coordinates(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cx, cy): the rows of x and y (n x d each) with every inner product kept, in r columns: the
    points themselves when d <= 8n (r = d, at most 4x the span: cheaper than an eigendecomposition then),
    else their coordinates in an orthonormal basis of their span (r = 2n, gram_coordinates)."""
    n, d = x.shape
    if d <= OWN_COORDINATES * n:
        return x.astype(np.float64), y.astype(np.float64)
    return gram_coordinates(add_gram(None, x, y))


def span_search(cx: np.ndarray, cy: np.ndarray, n_directions: int, rng: np.random.Generator,
                steps: int = REFINE_STEPS, starts: int = REFINE_STARTS) -> tuple[float, str, int]:
    """(max W_2 found, its start, refinement steps taken) over unit directions of R^r for the points'
    coordinates: n_directions seeded Gaussian directions, the mean-difference and the top
    paired-difference directions; the best `starts` of them refined (_refine)."""
    r = cx.shape[1]
    named = []
    md = cy.mean(axis=0) - cx.mean(axis=0)
    if np.linalg.norm(md) > 0:
        named.append(("mean-difference direction", md / np.linalg.norm(md)))
    diff = cy - cx
    if np.any(diff):   # the top right singular vector by power steps (a start: it need not be exact)
        top = diff[np.argmax(np.einsum("ij,ij->i", diff, diff))]
        for _ in range(30):
            top = diff.T @ (diff @ top)
            top /= np.linalg.norm(top)
        named.append(("paired-difference direction", top))
    g = rng.standard_normal((n_directions, r))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    labels = [name for name, _ in named] + [f"random direction {j} of {n_directions}" for j in range(n_directions)]
    theta = np.concatenate([np.array([v for _, v in named]).reshape(-1, r), g])
    w = w2_sorted(cx @ theta.T, cy @ theta.T)
    best = (-1.0, "", 0)
    for j in np.argsort(-w, kind="stable")[:starts]:
        _, wj, taken = _refine(cx, cy, theta[j], float(w[j]), steps)
        if wj > best[0] * (1.0 + 1e-9):   # a start that only ties (to rounding) a better-ranked one loses
            best = (wj, labels[j], taken)
    return best


def _refine(x: np.ndarray, y: np.ndarray, theta: np.ndarray, w: float, steps: int) -> tuple[np.ndarray, float, int]:
    """Power steps on the sorted matching: theta <- top direction of sum (x_s(i) - y_t(i))^2; keep if W_2 grows.
    The step sum_i (x_s(i) - y_t(i)) ((x_s(i) - y_t(i)) . theta) is x^T p - y^T q with the sorted
    projection gaps scattered back to the points: two products, no n x r copies."""
    n = x.shape[0]
    a, b = x @ theta, y @ theta
    taken = 0
    for _ in range(steps):
        sa, sb = np.argsort(a, kind="stable"), np.argsort(b, kind="stable")
        gap = a[sa] - b[sb]
        p, q = np.empty(n), np.empty(n)
        p[sa] = gap
        q[sb] = gap
        g = (x.T @ p - y.T @ q) / n
        gn = float(np.linalg.norm(g))
        if not np.isfinite(gn) or gn == 0.0:
            break
        cand = g / gn
        ca, cb = x @ cand, y @ cand
        wc = float(np.sqrt(np.mean((np.sort(ca) - np.sort(cb)) ** 2)))
        if not wc > w * (1.0 + 1e-9):
            break
        theta, w, a, b, taken = cand, wc, ca, cb, taken + 1
    return theta, w, taken


class _Block:
    """One block's state over the passes: its statistics, its Gram matrix over the features done so
    far, and in the current pass its kept points (features lo:hi) or nothing (skipped: a later pass)."""

    def __init__(self, index: int, d: int):
        self.index, self.d = index, d
        self.lo, self.hi = 0, d
        self.gram = None
        self.slices = []                   # the point slices of a sliced block with d <= OWN_COORDINATES * n
        self.sliced = False
        self.n, self.sq_x, self.sq_branch = 0, 0.0, 0.0
        self.coords = None
        self.start_pass()

    def start_pass(self) -> None:
        self.skipped = False
        self.hi = self.d
        self.xs, self.ys, self.kept_bytes = [], [], 0
        self._n, self._sq_x, self._sq_branch = 0, 0.0, 0.0

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        if self.skipped:
            return
        if self.lo == 0:   # the statistics: once, in the pass that takes the first features
            x64 = x.astype(np.float64, copy=False)
            y64 = y.astype(np.float64, copy=False)
            self._sq_x += float(np.einsum("ij,ij->", x64, x64))
            diff = y64 - x64
            self._sq_branch += float(np.einsum("ij,ij->", diff, diff))
            self._n += x.shape[0]
        # the kept points keep the caller's precision (float32 for float32 taps), copied from the tap
        dt = np.float32 if x.dtype.itemsize <= 4 else np.float64
        self.xs.append(np.array(x[:, self.lo:self.hi], dtype=dt))
        self.ys.append(np.array(y[:, self.lo:self.hi], dtype=dt))
        self.kept_bytes += self.xs[-1].nbytes + self.ys[-1].nbytes

    def skip(self) -> None:
        """Over budget: drop this pass's points; a later pass takes the block again."""
        self.start_pass()
        self.skipped = True

    def narrow(self, budget: int) -> bool:
        """Over budget alone: keep fewer features (half of what fits now, so that a growing sample count
        narrows it rarely); the rest go to later passes. False when one feature is already the least."""
        width = self.hi - self.lo
        keep = max(1, int(budget // (self.kept_bytes / width)) // 2)
        if keep >= width:
            return False
        self.hi = self.lo + keep
        self.xs = [a[:, :keep].copy() for a in self.xs]
        self.ys = [a[:, :keep].copy() for a in self.ys]
        self.kept_bytes = sum(a.nbytes for a in self.xs + self.ys)
        self.sliced = True
        return True

    def finish_pass(self) -> bool:
        """End of a pass that kept this block: True when its coordinates are ready, False when features
        remain for the next pass."""
        if self.lo == 0:
            self.n, self.sq_x, self.sq_branch = self._n, self._sq_x, self._sq_branch
        x, y = np.concatenate(self.xs), np.concatenate(self.ys)
        self.xs, self.ys, self.kept_bytes = [], [], 0
        if not self.sliced:
            self.coords = span_coordinates(x, y)
            return True
        if self.d <= OWN_COORDINATES * self.n:   # the points are then at most twice the Gram matrix
            self.slices.append((x, y))
        else:
            self.gram = add_gram(self.gram, x, y)
        self.lo = self.hi
        if self.lo < self.d:
            return False
        if self.slices:   # the same coordinates as one pass would give
            self.coords = span_coordinates(np.concatenate([a for a, _ in self.slices], axis=1),
                                           np.concatenate([b for _, b in self.slices], axis=1))
        else:
            self.coords = gram_coordinates(self.gram)
        self.gram, self.slices = None, []
        return True


def _fit_budget(blocks: list, budget: int) -> None:
    """Leave the last kept blocks (model order) to a later pass until the kept points fit in the budget,
    keeping at least the first one, whose features are narrowed when it exceeds the budget alone."""
    kept = [b for b in blocks if not b.skipped]
    total = sum(b.kept_bytes for b in kept)
    while kept and total > budget:
        if len(kept) > 1:
            last = kept.pop()
            total -= last.kept_bytes
            last.skip()
            continue
        if not kept[0].narrow(budget):
            break
        total = kept[0].kept_bytes


def lacoot_scores(model, calib=None, calib_batches=None, n_directions: int = N_DIRECTIONS,
                  seed: int = SEED) -> ScoreResult:
    require_calib(calib, "lacoot", "LaCoOT compares each residual block's input and output distributions")
    blocks = find_residual_blocks(to_graph(model), node_key_names(model))
    ident = identity_blocks(blocks, "--method lacoot")

    def pairs(keys):
        sub = [b for b in ident if b.key in set(keys)]
        names = [t for b in sub for t in (b.input.name, b.output.name)]
        for got, _ in tapped_batches(model, names, calib, calib_batches, MIN_SAMPLES, "lacoot"):
            yield {b.key: (got[b.input.name], got[b.output.name]) for b in sub}

    return mswd_scores(blocks, pairs, n_directions, seed, "--method lacoot")


def identity_blocks(blocks: list, what: str) -> list:
    """The identity-skip blocks LaCoOT scores; CollapseError when there are none (either front end)."""
    if not blocks:
        raise CollapseError(f"{what}: no residual blocks (an add of a tensor x and a branch computed from x) "
                            "found in this model; LaCoOT scores residual blocks only")
    ident = [b for b in blocks if b.identity]
    if not ident:
        raise CollapseError(f"{what}: all {len(blocks)} residual block(s) have a projection shortcut; "
                            "LaCoOT needs identity-skip blocks (input and output in the same space)")
    return ident


def mswd_scores(blocks: list, batches, n_directions: int = N_DIRECTIONS, seed: int = SEED,
                what: str = "--method lacoot") -> ScoreResult:
    """The LaCoOT ScoreResult of `blocks` (objects with .key, .identity and .describe(), identity-skip
    ones scored). `batches`: a callable keys -> an iterable of {block key: (block input, block output)}
    arrays per calibration batch (first axis = samples) for those blocks, called once per pass over the
    calibration data (the same data each time); or such an iterable, read into memory once. Front-end
    neutral: the ONNX path taps onnxruntime, the torch path an fx interpreter, and both get the same
    numbers from the same points."""
    if not callable(batches):
        data = list(batches)
        batches = lambda keys: data  # noqa: E731
    ident = [b for b in blocks if b.identity]
    state: dict[str, _Block] = {}
    mismatch: dict[str, str] = {}
    todo = [b.key for b in ident]
    index = {k: i for i, k in enumerate(todo)}
    passes, sliced = 0, set()
    while todo:
        passes += 1
        for key in todo:
            if key in state:
                state[key].start_pass()
        for got in batches(list(todo)):
            for key in todo:
                if key in mismatch or key not in got:
                    continue
                xa, ya = (np.asarray(v) for v in got[key])
                x = xa.reshape(xa.shape[0], -1)
                y = ya.reshape(ya.shape[0], -1)
                if x.shape != y.shape:
                    mismatch[key] = f"input {xa.shape[1:]} and output {ya.shape[1:]} differ (a broadcasting Add)"
                    state.pop(key, None)
                    continue
                if key not in state:
                    state[key] = _Block(index[key], x.shape[1])
                state[key].update(x, y)
            _fit_budget([state[k] for k in todo if k in state], POINT_BUDGET_BYTES)
        left = []
        for key in todo:
            st = state.get(key)
            if st is None:
                continue
            if st.skipped or not st.finish_pass():
                left.append(key)
            if st.sliced:
                sliced.add(key)
        todo = left
    scores, details = {}, {}
    n_samples = 0
    for b in blocks:
        if not b.identity:
            details[b.key] = {**_desc(b), "score": None, "reason": "projection shortcut: input and output spaces differ"}
            continue
        if b.key in mismatch:
            details[b.key] = {**_desc(b), "score": None, "reason": mismatch[b.key]}
            continue
        st = state.get(b.key)
        if st is None:
            details[b.key] = {**_desc(b), "score": None, "reason": "no calibration points reached it"}
            continue
        n_samples = st.n
        cx, cy = st.coords
        if st.sq_branch == 0.0:   # output == input on every sample (a zero branch): no direction moves them
            w, how, steps = 0.0, "output equal to input on every sample", 0
        else:
            w, how, steps = span_search(cx, cy, n_directions, np.random.default_rng([seed, st.index]))
        rms = float(np.sqrt(st.sq_x / st.n))
        score = w / rms if rms > 0 else w
        scores[b.key] = score
        details[b.key] = {**_desc(b), "score": score, "mswd": w, "input_rms": rms,
                          "relative_branch_rms": float(np.sqrt(st.sq_branch / st.n)) / rms if rms > 0 else None,
                          "dim": st.d, "samples": st.n, "search_dim": int(cx.shape[1]), "directions": n_directions,
                          "start": how, "refine_steps": steps}
    if not scores:
        raise CollapseError(f"{what}: no residual block could be scored (" +
                            "; ".join(f"{k}: {v}" for k, v in mismatch.items()) + ")")
    notes = [f"lacoot: max-sliced W2 between block input and output on {n_samples} calibration sample(s), "
             f"searched in the span of the points ({n_directions} seeded directions, seed {seed}, and the mean- and "
             f"paired-difference directions; the best {REFINE_STARTS} refined), divided by the input RMS norm; "
             f"{len(scores)} identity-skip block(s) scored"]
    proj = [b for b in blocks if not b.identity]
    if proj:
        notes.append(f"lacoot: {len(proj)} block(s) with a projection shortcut get no score "
                     f"({', '.join(b.key for b in proj[:4])}{', ...' if len(proj) > 4 else ''})")
    if passes > 1:
        notes.append(f"lacoot: the calibration points exceed {POINT_BUDGET_BYTES >> 20} MiB: {passes} passes over "
                     "the calibration data" + (f", the features of {', '.join(sorted(sliced, key=index.get))} in "
                                               "slices" if sliced else "") + "; --calib-batches limits the set")
    if n_samples < 32:
        notes.append(f"lacoot: only {n_samples} calibration sample(s); 32 or more give a stabler distance")
    return ScoreResult("lacoot", "mswd", "block", scores, details, notes)


def _desc(b) -> dict:
    d = b.describe()
    d.pop("key", None)
    return d
