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

The max is searched over N_DIRECTIONS seeded Gaussian directions plus the mean-difference direction
(the points are projected in as few passes as PROJECTION_BUFFER_BYTES allows, usually one at the
end: generating the K x d directions costs more than projecting them; only projections outlive a
pass), then refined by projected power steps on the fixed sorted matching (accepted only while W_2
grows) when the points fit in POINT_BUDGET_BYTES; otherwise the best random direction is used (a
note says so). Deterministic for a fixed calibration set and seed.

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
REFINE_STEPS = 30
#: the points of all blocks are kept for refinement while they take at most this many bytes
POINT_BUDGET_BYTES = 256 << 20
#: points wait (all blocks together, at most this many bytes) to be projected in one pass over each
#: block's directions: generating K x d Gaussians costs far more than the projection, so it is done
#: once per flush, not once per calibration batch
PROJECTION_BUFFER_BYTES = 256 << 20
#: the random direction matrices are cached while they take at most this many bytes (else regenerated)
DIRECTION_BUDGET_BYTES = 128 << 20
#: two points per distribution is the least that defines a distance; 32+ recommended (a note says so)
MIN_SAMPLES = 2
_CHUNK = 1 << 16
#: rows of points stacked into one float64 matrix product with a direction chunk (bounds the temporary)
_GROUP_BYTES = 32 << 20


def w2_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """W_2 between the columns of a and b (equal numbers of rows) along axis 0."""
    sa = np.sort(a, axis=0)
    sb = np.sort(b, axis=0)
    return np.sqrt(np.mean((sa - sb) ** 2, axis=0))


class _Directions:
    """K seeded Gaussian directions in R^d, generated in column chunks (cached when small). Chunk c
    always comes from the generator seeded [seed, block, c], row after row, so the directions do not
    depend on when or how often they are generated; the generator state at each row start is kept,
    so one direction (vector) costs d draws, not K x d. Norms are summed on the first pass."""

    def __init__(self, d: int, k: int, seed: int, block_index: int, cache: bool):
        self.d, self.k, self.seed, self.block = d, k, seed, block_index
        self._cache = {} if cache else None
        self._row_states: dict[int, list] = {}
        self.norm = None

    def _chunks(self):
        return [(lo, min(lo + _CHUNK, self.d)) for lo in range(0, self.d, _CHUNK)]

    def _rng(self, c: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.block, c])

    def _gen(self, c: int, width: int) -> np.ndarray:
        if self._cache is not None and c in self._cache:
            return self._cache[c]
        rng = self._rng(c)
        g = np.empty((self.k, width))
        states = []
        for row in g:  # the same draws as rng.standard_normal((k, width)) (tests/test_lacoot_speed.py)
            states.append(rng.bit_generator.state)
            rng.standard_normal(out=row)
        self._row_states[c] = states
        if self._cache is not None:
            self._cache[c] = g
        return g

    def project_raw(self, batches: list) -> list:
        """theta_j . p (unnormalised: divide by .norm) for every row p of every array in `batches`,
        all with one generation of the directions (rows stacked into few matrix products)."""
        rows = [p.shape[0] for p in batches]
        out = np.zeros((sum(rows), self.k))
        sq = np.zeros(self.k) if self.norm is None else None
        for c, (lo, hi) in enumerate(self._chunks()):
            g = self._gen(c, hi - lo)
            if sq is not None:
                sq += np.einsum("ij,ij->i", g, g)
            for r0, r1, parts in _row_groups(batches, max(1, _GROUP_BYTES // (8 * (hi - lo)))):
                out[r0:r1] += np.concatenate([p[a:b, lo:hi] for p, a, b in parts], dtype=np.float64) @ g.T
        if sq is not None:
            self.norm = np.sqrt(sq)
        return np.split(out, np.cumsum(rows)[:-1])

    def vector(self, j: int) -> np.ndarray:
        parts = []
        for c, (lo, hi) in enumerate(self._chunks()):
            if (self._cache is not None and c in self._cache) or c not in self._row_states:
                parts.append(self._gen(c, hi - lo)[j])
                continue
            rng = self._rng(c)
            rng.bit_generator.state = self._row_states[c][j]
            parts.append(rng.standard_normal(hi - lo))
        return np.concatenate(parts) / self.norm[j]


def _row_groups(batches: list, max_rows: int):
    """(first row, end row, [(array, row from, row to)]) groups of at most max_rows stacked rows."""
    r0, parts, n = 0, [], 0
    for p in batches:
        a = 0
        while a < p.shape[0]:
            b = min(p.shape[0], a + max_rows - n)
            parts.append((p, a, b))
            n += b - a
            a = b
            if n == max_rows:
                yield r0, r0 + n, parts
                r0, parts, n = r0 + n, [], 0
    if parts:
        yield r0, r0 + n, parts


class _BlockAcc:
    def __init__(self, block, index: int, d: int, k: int, seed: int, cache: bool):
        self.block, self.d = block, d
        self.dirs = _Directions(d, k, seed, index, cache)
        self.px, self.py = [], []          # unnormalised projections of the flushed batches
        self.pending = []                  # (x, y) batches not projected yet
        self.pending_bytes = 0
        self.xs, self.ys = [], []          # float32 points kept for refinement
        self.sum_x = np.zeros(d)
        self.sum_y = np.zeros(d)
        self.sq_x = 0.0
        self.sq_branch = 0.0
        self.n = 0

    def update(self, x: np.ndarray, y: np.ndarray, keep: bool) -> None:
        x64 = x.astype(np.float64, copy=False)
        y64 = y.astype(np.float64, copy=False)
        self.sum_x += x64.sum(axis=0)
        self.sum_y += y64.sum(axis=0)
        self.sq_x += float(np.einsum("ij,ij->", x64, x64))
        diff = y64 - x64
        self.sq_branch += float(np.einsum("ij,ij->", diff, diff))
        self.n += x.shape[0]
        # waiting points keep the caller's precision (float32 for float32 taps: then they are the kept copy)
        xp, yp = (np.array(v, dtype=np.float32 if v.dtype.itemsize <= 4 else np.float64) for v in (x, y))
        self.pending.append((xp, yp))
        self.pending_bytes += xp.nbytes + yp.nbytes
        if keep:
            self.xs.append(xp if xp.dtype == np.float32 else xp.astype(np.float32))
            self.ys.append(yp if yp.dtype == np.float32 else yp.astype(np.float32))

    def flush(self) -> None:
        """Project the waiting points (one generation of the directions) and release them."""
        if not self.pending and self.dirs.norm is not None:
            return
        outs = self.dirs.project_raw([p for pair in self.pending for p in pair])
        self.px.extend(outs[0::2])
        self.py.extend(outs[1::2])
        self.pending, self.pending_bytes = [], 0

    def projections(self) -> tuple[np.ndarray, np.ndarray]:
        self.flush()
        return np.concatenate(self.px) / self.dirs.norm, np.concatenate(self.py) / self.dirs.norm

    def drop_points(self) -> None:
        self.xs, self.ys = [], []


def _refine(x: np.ndarray, y: np.ndarray, theta: np.ndarray, w: float, steps: int) -> tuple[np.ndarray, float, int]:
    """Power steps on the sorted matching: theta <- top direction of sum (x_s(i) - y_t(i))^2; keep if W_2 grows."""
    n = x.shape[0]
    taken = 0
    for _ in range(steps):
        a, b = x @ theta, y @ theta
        dmat = x[np.argsort(a, kind="stable")] - y[np.argsort(b, kind="stable")]
        g = dmat.T @ (dmat @ theta) / n
        gn = float(np.linalg.norm(g))
        if not np.isfinite(gn) or gn == 0.0:
            break
        cand = g / gn
        wc = float(w2_sorted((x @ cand)[:, None], (y @ cand)[:, None])[0])
        if not wc > w * (1.0 + 1e-9):
            break
        theta, w, taken = cand, wc, taken + 1
    return theta, w, taken


def lacoot_scores(model, calib=None, calib_batches=None, n_directions: int = N_DIRECTIONS,
                  seed: int = SEED) -> ScoreResult:
    require_calib(calib, "lacoot", "LaCoOT compares each residual block's input and output distributions")
    blocks = find_residual_blocks(to_graph(model), node_key_names(model))
    ident = identity_blocks(blocks, "--method lacoot")
    names = [t for b in ident for t in (b.input.name, b.output.name)]

    def pairs():
        for got, _ in tapped_batches(model, names, calib, calib_batches, MIN_SAMPLES, "lacoot"):
            yield {b.key: (got[b.input.name], got[b.output.name]) for b in ident}

    return mswd_scores(blocks, pairs(), n_directions, seed, "--method lacoot")


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
    ones scored) from `batches`: an iterable of {block key: (block input, block output)} arrays per
    calibration batch, first axis = samples. Front-end neutral: the ONNX path taps onnxruntime, the
    torch path an fx interpreter, and both get the same numbers from the same points."""
    ident = [b for b in blocks if b.identity]
    proj = [b for b in blocks if not b.identity]
    accs: dict[str, _BlockAcc] = {}
    mismatch: dict[str, str] = {}
    keep = True
    kept_bytes = 0
    for got in batches:
        for i, b in enumerate(ident):
            if b.key in mismatch or b.key not in got:
                continue
            xa, ya = (np.asarray(v) for v in got[b.key])
            x = xa.reshape(xa.shape[0], -1)
            y = ya.reshape(ya.shape[0], -1)
            if x.shape != y.shape:
                mismatch[b.key] = f"input {xa.shape[1:]} and output {ya.shape[1:]} differ (a broadcasting Add)"
                continue
            acc = accs.get(b.key)
            if acc is None:
                cache = n_directions * x.shape[1] * 8 * len(ident) <= DIRECTION_BUDGET_BYTES
                acc = accs[b.key] = _BlockAcc(b, i, x.shape[1], n_directions, seed, cache)
            if keep:
                kept_bytes += 8 * x.size
                if kept_bytes > POINT_BUDGET_BYTES:
                    keep = False
                    for a in accs.values():
                        a.drop_points()
            acc.update(x, y, keep)
            if sum(a.pending_bytes for a in accs.values()) > PROJECTION_BUFFER_BYTES:
                for a in accs.values():
                    a.flush()
    scores, details = {}, {}
    n_samples = 0
    for b in blocks:
        if not b.identity:
            details[b.key] = {**_desc(b), "score": None, "reason": "projection shortcut: input and output spaces differ"}
            continue
        if b.key in mismatch:
            details[b.key] = {**_desc(b), "score": None, "reason": mismatch[b.key]}
            continue
        acc = accs.get(b.key)
        if acc is None:
            details[b.key] = {**_desc(b), "score": None, "reason": "no calibration points reached it"}
            continue
        n_samples = acc.n
        px, py = acc.projections()
        w_dirs = w2_sorted(px, py)
        j = int(np.argmax(w_dirs))
        w, how, steps = float(w_dirs[j]), f"random direction {j} of {n_directions}", 0
        if keep and acc.xs:
            x = np.concatenate(acc.xs).astype(np.float64)
            y = np.concatenate(acc.ys).astype(np.float64)
            theta = acc.dirs.vector(j)
            md = (acc.sum_y - acc.sum_x) / acc.n
            mn = float(np.linalg.norm(md))
            if mn > 0:
                md = md / mn
                wm = float(w2_sorted((x @ md)[:, None], (y @ md)[:, None])[0])
                if wm > w:
                    theta, w, how = md, wm, "mean-difference direction"
            theta, w, steps = _refine(x, y, theta, w, REFINE_STEPS)
        rms = float(np.sqrt(acc.sq_x / acc.n))
        score = w / rms if rms > 0 else w
        scores[b.key] = score
        details[b.key] = {**_desc(b), "score": score, "mswd": w, "input_rms": rms,
                          "relative_branch_rms": float(np.sqrt(acc.sq_branch / acc.n)) / rms if rms > 0 else None,
                          "dim": acc.d, "samples": acc.n, "directions": n_directions, "start": how,
                          "refine_steps": steps, "refined": bool(keep and acc.xs)}
    if not scores:
        raise CollapseError(f"{what}: no residual block could be scored (" +
                            "; ".join(f"{k}: {v}" for k, v in mismatch.items()) + ")")
    notes = [f"lacoot: max-sliced W2 between block input and output on {n_samples} calibration sample(s) "
             f"({n_directions} seeded directions, seed {seed}{', refined' if keep else ''}), divided by the input RMS "
             f"norm; {len(scores)} identity-skip block(s) scored"]
    if proj:
        notes.append(f"lacoot: {len(proj)} block(s) with a projection shortcut get no score "
                     f"({', '.join(b.key for b in proj[:4])}{', ...' if len(proj) > 4 else ''})")
    if not keep:
        notes.append(f"lacoot: the calibration points exceed {POINT_BUDGET_BYTES >> 20} MiB: the max is over the "
                     "random directions only (not refined); use --calib-batches to limit the set")
    if n_samples < 32:
        notes.append(f"lacoot: only {n_samples} calibration sample(s); 32 or more give a stabler distance")
    return ScoreResult("lacoot", "mswd", "block", scores, details, notes)


def _desc(b) -> dict:
    d = b.describe()
    d.pop("key", None)
    return d
