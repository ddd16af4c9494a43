"""Fast path of precision/recall: a float32 GEMM filter with a rigorous error bound, then the exact
float16 emulation of ``precision_recall`` only for the entries the bound cannot decide.

Results equal the exact path entry by entry: every radius is the k-th smallest EXACT emulated
distance of its row and every membership is decided by an exact emulated distance or by a bound
that proves the comparison. Only the work changes: self-distance tiles are computed once for both
orientations (the bound is symmetric), and exact values are computed for a few candidates per row.

The bound (proof sketch; u = 2^-24, c = 2^-11 + 2^-23, eta = 2^-25).
Let x, y be float16-rounded rows, nu, nv their emulated float16 squared norms, m = sum x*y (real),
S = nu + nv - 2m. The filter computes G = [x, nu, 1, 0..] . [-2y, 1, nv, 0..] by a float32 GEMM of
K' terms. Every term is exact in float32 (products of float16 values have 22 significant bits; the
norms are float16 values), so G is a sum of K' exact terms in some order of float32 additions and
|G - S| <= Ef = gamma(K'-1) * (2*|x|*|y| + nu + nv), gamma(n) = n*u/(1 - n*u) (any summation
order, FMA or not; Cauchy-Schwarz bounds sum |x*y|). The emulation computes x1 = fl32(m64)
(m64 the float64 sum, |m64 - m| <= 2^-42*|x||y|), x2 = r16(x1), x3 = r16(fl32(nu - 2*x2)),
x4 = r16(fl32(x3 + nv)), d = max(x4, 0). Rounding a real w to float32 then float16 errs by at
most c*|w| + eta (eta: half the float16 subnormal spacing). Hence, with ab = |x||y|,
e2 = (c + 2^-40)*ab + eta >= |x2 - m|, e3 = c*(nu + 2*|x2|) + eta >= |x3 - (nu - 2*x2)| and
|x4 - (x3 + nv)| <= c*(|S| + 2*e2 + e3) + eta, so
    |x4 - G| <= E0 + c*|G|,   E0 = (1 + c)*(Ef + 2*e2 + e3) + eta,
and lower(G) = G - c|G| - E0 <= d <= upper(G) = max(G + c|G| + E0, 0), both increasing in G.
E0 is evaluated per tile from the largest norms of its rows and columns. No intermediate
overflows float16 when nu + nv + 2*ab*(1 + 2^-9) + 1 < 65504*(1 - 2^-9) for all pairs; otherwise
the caller uses the exact path (which also decides the reference's float32 fallback).

Decisions. Radius r_i (k-th smallest of row i, self included): t_i = upper(k-th smallest G of the
row over the diagonal tile) >= r_i; every j with d_ij <= t_i has lower(G_ij) <= t_i, so the
candidates {j: lower(G_ij) <= t_i} contain all entries up to t_i, hence the row's k+1 smallest;
the radius is the k-th smallest exact value among them (after pruning with the tighter
t'_i = k-th smallest upper bound among candidates). Membership d_ij <= r: proved by upper(G) <= r,
refuted by lower(G) > r, exact otherwise. A tile whose candidates exceed a budget (many
near-duplicate rows) is evaluated exactly, keeping only what can matter (k+1 smallest per row,
or the comparisons themselves), so memory stays bounded.

The GEMM must accumulate in float32 or better (numpy/torch float32 matmul; TF32 would also be
exact on float16-valued inputs, bfloat16 inputs would not): the float32 matmul precision is set
to "highest" while the filter runs, and a spot check compares G with float64 on every call.
"""

from __future__ import annotations

import contextlib

import numpy as np

U32 = 2.0 ** -24
C16 = 2.0 ** -11 + 2.0 ** -23  # |r16(fl32(w)) - w| <= C16*|w| + ETA
C16P = C16 + 2.0 ** -40  # also covers the float64 summation error of m64
ETA = 2.0 ** -25
SAFE_LIMIT = 65504.0 * (1 - 2.0 ** -9)
TILE = 4096  # rows/columns per GEMM tile (tests shrink it)
CAND_PER_ROW = 64  # candidates per tile row above which a tile is evaluated exactly
PAIR_CHUNK = 4096  # pairs per exact-evaluation batch


def _r16(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x.astype(np.float16).astype(np.float32)


def chain(m64: np.ndarray, nu: np.ndarray, nv: np.ndarray) -> np.ndarray:
    """Emulated float16 distance from float64 dot products and float16 norms (float32 ops)."""
    m = np.asarray(m64, np.float64).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        m2 = _r16(_r16(m) * np.float32(2))
        d = _r16(_r16(nu - m2) + nv)
        return np.maximum(d, np.float32(0))


class FeatureSet:
    """One feature set on the device: rows [x16, nu, 1, 0...] plus float64 bound inputs."""

    def __init__(self, torch, device, feats: np.ndarray):
        n, dim = feats.shape
        self.n, self.dim = n, dim
        self.kp = ((dim + 2 + 15) // 16) * 16  # zero padding adds exact zero terms (counted in K')
        host = torch.zeros((n, self.kp), dtype=torch.float32)
        self.norms = np.empty(n, np.float32)
        self.absn = np.empty(n, np.float64)
        for s in range(0, n, 4096):
            x16 = torch.from_numpy(feats[s:s + 4096]).half().float()  # IEEE round-to-nearest-even, as numpy
            sq = (x16 * x16).numpy()  # exact in float32 (22 significant bits)
            # the exact path's norms: float16 squares, summed in float64 by numpy, float32, float16
            sq16 = torch.from_numpy(sq).half().float().numpy()
            self.norms[s:s + len(sq)] = _r16(sq16.sum(axis=1, dtype=np.float64).astype(np.float32))
            self.absn[s:s + len(sq)] = np.sqrt(sq.sum(axis=1, dtype=np.float64))
            host[s:s + len(sq), :dim] = x16
        host[:, dim] = torch.from_numpy(self.norms)
        host[:, dim + 1] = 1.0
        self.absn *= 1 + 2.0 ** -40
        self.nonneg = bool((host[:, :dim] >= 0).all())
        self.torch = torch
        self.device = device
        self.L = host.to(device)

    def right_t(self, s: int, e: int):
        """[K', e-s] right operand (-2y, 1, nv, 0...) transposed, built on the fly."""
        t = self.torch
        r = t.zeros((e - s, self.kp), dtype=t.float32, device=self.device)
        r[:, :self.dim] = self.L[s:e, :self.dim] * -2.0
        r[:, self.dim] = 1.0
        r[:, self.dim + 1] = self.L[s:e, self.dim]
        return r.T.contiguous()


def safe(a: FeatureSet, b: FeatureSet) -> bool:
    """True when no float16 intermediate can overflow for any pair of rows (so no float32 fallback)."""
    w = float(a.norms.max()) + float(b.norms.max()) + 2 * float(a.absn.max()) * float(b.absn.max()) * (1 + 2.0 ** -9)
    return bool(np.isfinite(w) and w + 1 < SAFE_LIMIT)


def tile_bound(a_max: float, b_max: float, nu_max: float, nv_max: float, kp: int, nonneg: bool = False) -> float:
    """E0 of the module docstring for a tile (``nonneg``: all features >= 0, so 0 <= x2 and
    |nu - 2*x2| <= max(nu, 2*x2) instead of nu + 2*|x2|)."""
    ab = a_max * b_max
    n = kp - 1
    ef = n * U32 / (1 - n * U32) * (2 * ab + nu_max + nv_max)
    e2 = C16P * ab + ETA
    x2_max = 2 * ((1 + C16P) * ab + ETA)
    e3 = C16 * (max(nu_max, x2_max) if nonneg else nu_max + x2_max) + ETA
    return ((1 + C16) * (ef + 2 * e2 + e3) + ETA) * (1 + 2.0 ** -30)


def lower(g: np.ndarray, e0: float) -> np.ndarray:
    g = np.asarray(g, np.float64)
    return (g - C16 * np.abs(g) - e0) * (1 - 2.0 ** -40) - 2.0 ** -60


def upper(g: np.ndarray, e0: float) -> np.ndarray:
    g = np.asarray(g, np.float64)
    return np.maximum((g + C16 * np.abs(g) + e0) * (1 + 2.0 ** -40) + 2.0 ** -60, 0.0)


def _f32_up(g: np.ndarray) -> np.ndarray:
    f = g.astype(np.float32)
    return np.where(f.astype(np.float64) < g, np.nextafter(f, np.float32(np.inf)), f)


def _f32_down(g: np.ndarray) -> np.ndarray:
    f = g.astype(np.float32)
    return np.where(f.astype(np.float64) > g, np.nextafter(f, np.float32(-np.inf)), f)


def may_be_le(t: np.ndarray, e0: float) -> np.ndarray:
    """float32 thresholds: lower(G) <= t implies G <= returned value (rounded up: safe)."""
    v = np.asarray(t, np.float64) + e0
    g = np.where(v >= 0, v / (1 - C16), v / (1 + C16))
    return _f32_up(g + 1e-9 * (np.abs(g) + 1))


def surely_le(t: np.ndarray, e0: float) -> np.ndarray:
    """float32 thresholds: G <= returned value implies upper(G) <= t (rounded down: safe)."""
    t = np.asarray(t, np.float64)
    v = t - e0
    g = np.where(v >= 0, v / (1 + C16), v / (1 - C16))
    g = np.where(t < 0, -np.inf, g - 1e-9 * (np.abs(g) + 1))
    return _f32_down(g)


@contextlib.contextmanager
def highest_precision(torch):
    """float32 matmuls in full float32 (no bfloat16 decomposition) while the filter runs."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def exact_pairs(a: FeatureSet, b: FeatureSet, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Exact emulated distances d(a[rows], b[cols]) (a's rows as the block's rows), float32.

    Products of float16 values are exact in float32; their float64 sum is the exact path's m64.
    """
    t = a.torch
    out = np.empty(len(rows), np.float32)
    cpu = a.L.device.type == "cpu"
    step = 256 if cpu else PAIR_CHUNK  # small host chunks stay in cache
    for s in range(0, len(rows), step):
        r, c = rows[s:s + step], cols[s:s + step]
        if cpu:
            xa, xb = a.L.numpy(), b.L.numpy()
            m64 = (xa[r, :a.dim] * xb[c, :b.dim]).sum(axis=1, dtype=np.float64)
        else:
            ri, ci = t.from_numpy(r).to(a.device), t.from_numpy(c).to(a.device)
            m64 = (a.L[ri, :a.dim] * b.L[ci, :b.dim]).sum(dim=1, dtype=t.float64).cpu().numpy()
        out[s:s + len(m64)] = chain(m64, a.norms[r], b.norms[c])
    return out


def exact_tile(a: FeatureSet, b: FeatureSet, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Exact emulated distance tile [r1-r0, c1-c0] (float64 GEMM as the exact path)."""
    m64 = (a.L[r0:r1, :a.dim].double() @ b.L[c0:c1, :b.dim].double().T).cpu().numpy()
    return chain(m64, a.norms[r0:r1, None], b.norms[None, c0:c1])


def spot_check(a: FeatureSet, b: FeatureSet, g, r0: int, c0: int, e0: float) -> bool:
    """Compare a few filter entries with float64: False if any violates the bound."""
    t = a.torch
    m, n = g.shape
    idx_r = np.linspace(0, m - 1, min(m, 16)).astype(np.int64)
    idx_c = np.linspace(0, n - 1, min(n, 16)).astype(np.int64)
    gs = g[t.from_numpy(idx_r).to(g.device)][:, t.from_numpy(idx_c).to(g.device)].double().cpu().numpy()
    x = a.L[r0 + idx_r, :a.dim].double()
    y = b.L[c0 + idx_c, :b.dim].double()
    s = (a.norms[r0 + idx_r].astype(np.float64)[:, None] + b.norms[c0 + idx_c].astype(np.float64)[None, :]
         - 2 * (x @ y.T).cpu().numpy())
    ef = (a.kp - 1) * U32 / (1 - (a.kp - 1) * U32) * (
        2 * a.absn[r0 + idx_r, None] * b.absn[None, c0 + idx_c]
        + a.norms[r0 + idx_r, None] + b.norms[None, c0 + idx_c])
    return bool(np.all(np.abs(gs - s) <= ef * 1.001 + 1e-6))


class BoundViolation(RuntimeError):
    """The GEMM did not meet the float32 accumulation bound (e.g. reduced-precision kernels)."""


def _nonzero(mask):
    idx = mask.nonzero()
    return idx[:, 0], idx[:, 1]


def _tiles(n: int, size: int, min_size: int) -> list[tuple[int, int]]:
    edges = list(range(0, n, size)) + [n]
    spans = [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < min_size:
        spans[-2:] = [(spans[-2][0], n)]
    return spans


def radii(fs: FeatureSet, k: int) -> np.ndarray:
    """float32 [N] exact emulated radii of a feature set (see the module docstring)."""
    t = fs.torch
    spans = _tiles(fs.n, TILE, k + 1)
    rows_l, cols_l, lo_l, hi_l = [], [], [], []
    tub = np.empty(fs.n, np.float64)  # upper bounds of the radii
    checked = False

    def add(r, c, g, e0, exact=False):
        rows_l.append(r)
        cols_l.append(c)
        if exact:
            lo_l.append(g.astype(np.float64))
            hi_l.append(g.astype(np.float64))
        else:
            lo_l.append(lower(g, e0))
            hi_l.append(upper(g, e0))

    def collect(g, r0, c0, e0, row_thr, transpose):
        """Candidates of tile g (rows r0.., cols c0..) for its rows, or for its columns if transpose."""
        m, n = g.shape
        if transpose:
            mask = g <= t.from_numpy(row_thr).to(g.device)[None, :]
            budget = CAND_PER_ROW * n
        else:
            mask = g <= t.from_numpy(row_thr).to(g.device)[:, None]
            budget = CAND_PER_ROW * m
        i, j = _nonzero(mask)
        if len(i) > budget:  # near-duplicates: exact tile, keep the k+1 smallest per row
            d = exact_tile(fs, fs, c0, c0 + n, r0, r0 + m) if transpose else exact_tile(fs, fs, r0, r0 + m, c0, c0 + n)
            kk = min(k + 1, d.shape[1])
            part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
            rr = np.repeat(np.arange(d.shape[0]), kk)
            cc = part.reshape(-1)
            base_r, base_c = (c0, r0) if transpose else (r0, c0)
            add(rr + base_r, cc + base_c, d[rr, cc], 0.0, exact=True)
            return
        gv = g[i, j].cpu().numpy()
        i, j = i.cpu().numpy(), j.cpu().numpy()
        if transpose:
            add(j + c0, i + r0, gv, e0)
        else:
            add(i + r0, j + c0, gv, e0)

    with highest_precision(t):
        amax = [float(fs.absn[s:e].max()) for s, e in spans]
        nmax = [float(fs.norms[s:e].max()) for s, e in spans]
        for (s, e), a_, n_ in zip(spans, amax, nmax):  # diagonal tiles: thresholds, then candidates
            g = fs.L[s:e] @ fs.right_t(s, e)
            e0 = tile_bound(a_, a_, n_, n_, fs.kp, fs.nonneg)
            if not checked:
                if not spot_check(fs, fs, g, s, s, e0):
                    raise BoundViolation("float32 GEMM exceeded its error bound")
                checked = True
            kth = t.topk(g, k + 1, dim=1, largest=False).values[:, k].double().cpu().numpy()
            tub[s:e] = upper(kth, e0)
            collect(g, s, s, e0, may_be_le(tub[s:e], e0), False)
        for bi, (s, e) in enumerate(spans):
            for bj in range(bi + 1, len(spans)):
                s2, e2 = spans[bj]
                g = fs.L[s:e] @ fs.right_t(s2, e2)
                nn = max(nmax[bi], nmax[bj])  # symmetric bound: valid for both orientations
                e0 = tile_bound(amax[bi], amax[bj], nn, nn, fs.kp, fs.nonneg)
                collect(g, s, s2, e0, may_be_le(tub[s:e], e0), False)
                collect(g, s, s2, e0, may_be_le(tub[s2:e2], e0), True)
    rows = np.concatenate(rows_l)
    cols = np.concatenate(cols_l)
    lo = np.concatenate(lo_l)
    hi = np.concatenate(hi_l)
    order = np.lexsort((hi, rows))
    rows, cols, lo, hi = rows[order], cols[order], lo[order], hi[order]
    starts = np.searchsorted(rows, np.arange(fs.n))
    counts = np.diff(np.append(starts, len(rows)))
    if np.any(counts < k + 1):
        raise AssertionError("fewer than k+1 candidates in a row: the bound logic is broken")
    t2 = np.minimum(hi[starts + k], tub)  # k-th smallest upper bound among candidates
    keep = lo <= t2[rows]
    rows, cols, lo, hi = rows[keep], cols[keep], lo[keep], hi[keep]
    # Round 1: exact values of the k+1 candidates with the smallest upper bounds of each row; their
    # k-th smallest is an upper bound t3 <= t2 of the radius. Round 2: the others with lower <= t3.
    starts = np.searchsorted(rows, np.arange(fs.n))
    rank = np.arange(len(rows)) - starts[rows]
    first = rank <= k
    d1 = exact_pairs(fs, fs, rows[first], cols[first])
    t3 = np.empty(fs.n, np.float64)
    t3[:] = _kth_per_row(rows[first], d1, fs.n, k)
    second = ~first & (lo <= t3[rows])
    d2 = exact_pairs(fs, fs, rows[second], cols[second])
    return _kth_per_row(np.concatenate([rows[first], rows[second]]), np.concatenate([d1, d2]), fs.n, k)


def _kth_per_row(rows: np.ndarray, d: np.ndarray, n: int, k: int) -> np.ndarray:
    """k-th smallest (0-based) of d per row (rows in [0, n), every row at least k+1 values)."""
    order = np.lexsort((d, rows))
    rows, d = rows[order], d[order]
    starts = np.searchsorted(rows, np.arange(n))
    return d[starts + k].astype(np.float32)


def membership(ref: FeatureSet, r_ref: np.ndarray, sample: FeatureSet, r_sample: np.ndarray):
    """(ref_in_sample_manifold, sample_in_ref_manifold) with exact emulated semantics."""
    t = ref.torch
    ref_in = np.zeros(ref.n, bool)
    sample_in = np.zeros(sample.n, bool)
    pend_ref, pend_sample = [], []  # undecided (row, col) pairs for each direction
    rs = _tiles(ref.n, TILE, 1)
    cs = _tiles(sample.n, TILE, 1)
    checked = False
    with highest_precision(t):
        for (r0, r1) in rs:
            a_ = float(ref.absn[r0:r1].max())
            nu_ = float(ref.norms[r0:r1].max())
            for (c0, c1) in cs:
                g = ref.L[r0:r1] @ sample.right_t(c0, c1)
                e0 = tile_bound(a_, float(sample.absn[c0:c1].max()), nu_, float(sample.norms[c0:c1].max()), ref.kp,
                                ref.nonneg and sample.nonneg)
                if not checked:
                    if not spot_check(ref, sample, g, r0, c0, e0):
                        raise BoundViolation("float32 GEMM exceeded its error bound")
                    checked = True
                # sample j inside the reference manifold: d(i, j) <= r_ref[i] (row thresholds)
                # reference i inside the sample manifold: d(i, j) <= r_sample[j] (column thresholds)
                for direction in (0, 1):
                    if direction == 0:
                        rad = r_ref[r0:r1]
                        mask = g <= t.from_numpy(may_be_le(rad, e0)).to(g.device)[:, None]
                    else:
                        rad = r_sample[c0:c1]
                        mask = g <= t.from_numpy(may_be_le(rad, e0)).to(g.device)[None, :]
                    i, j = _nonzero(mask)
                    if len(i) > CAND_PER_ROW * (r1 - r0):
                        d = exact_tile(ref, sample, r0, r1, c0, c1)
                        if direction == 0:
                            sample_in[c0:c1] |= np.any(d <= r_ref[r0:r1, None], axis=0)
                        else:
                            ref_in[r0:r1] |= np.any(d <= r_sample[None, c0:c1], axis=1)
                        continue
                    gv = g[i, j].cpu().numpy()
                    i, j = i.cpu().numpy(), j.cpu().numpy()
                    radv = rad[i] if direction == 0 else rad[j]
                    sure = gv <= surely_le(radv, e0)
                    if direction == 0:
                        sample_in[j[sure] + c0] = True
                        pend_sample.append((i[~sure] + r0, j[~sure] + c0))
                    else:
                        ref_in[i[sure] + r0] = True
                        pend_ref.append((i[~sure] + r0, j[~sure] + c0))
    for pend, flags, direction in ((pend_sample, sample_in, 0), (pend_ref, ref_in, 1)):
        if not pend:
            continue
        i = np.concatenate([p[0] for p in pend])
        j = np.concatenate([p[1] for p in pend])
        keep = ~flags[j] if direction == 0 else ~flags[i]
        i, j = i[keep], j[keep]
        if len(i) == 0:
            continue
        d = exact_pairs(ref, sample, i, j)
        if direction == 0:
            flags[j[d <= r_ref[i]]] = True
        else:
            flags[i[d <= r_sample[j]]] = True
    return ref_in, sample_in
