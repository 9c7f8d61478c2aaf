"""Histogram calibration: torch's HistogramObserver (L2 range search) per tensor and per
channel, plus percentile, MSE grid search and entropy (KL) calibration from the same
histograms.  Histograms are built by a C kernel (torch.histc's exact binning); the range
searches run on the 2048-bin histograms in float32 NumPy, following torch's arithmetic.
"""

import math

import numpy as np

from .. import _C
from .._check import check_axis, check_choice, check_float, check_int
from ..errors import ArgumentError
from .core import _float_input, _view, calc_qparams, minmax
from .observers import DTYPES, qparams_for, qrange

F32 = np.float32


def histc(x, bins, lo, hi, *, axis=None):
    """torch.histc of ``x`` (per channel along ``axis`` with per-channel lo/hi): int64
    counts, shape (bins,) or (C, bins)."""
    k = _float_input(x)
    view = _view(k.array.shape, None if axis is None else check_axis(axis, k.array.ndim), None)
    ns = 1 if axis is None else view[1]
    out = np.empty((ns, bins), np.int64)
    _C.quant_hist(k.raw, k.code, *view, np.asarray(lo, F32).reshape(-1),
                  np.asarray(hi, F32).reshape(-1), bins, out)
    return out[0] if axis is None else out


def _linspace(start, end, steps):
    """torch.linspace in float32 (first half from start, second half from end)."""
    start, end = F32(start), F32(end)
    step = (end - start) / F32(steps - 1)
    i = np.arange(steps)
    return np.where(i < steps // 2, start + np.float64(step) * i,
                    end - np.float64(step) * (steps - i - 1)).astype(F32)


def _upscale(hist, omin, omax, umin, umax, bins, rate=16):
    """torch's HistogramObserver._upscale_histogram."""
    h = (np.repeat(hist, rate) / F32(rate)).astype(F32)
    size = (F32(omax) - F32(omin)) / F32(bins * rate)
    mids = (_linspace(omin, omax, bins * rate + 1)[:-1] + F32(0.5) * size).astype(F32)
    bounds = _linspace(umin, umax, bins + 1)
    b = np.searchsorted(bounds, mids, side="right") - 1
    b = np.clip(b, 0, bins - 1)
    out = np.zeros(bins, F32)
    np.add.at(out, b, h)  # sequential float32 accumulation, as torch.bincount
    return out


def _quant_error(hist, min_val, max_val, bins, dst_nbins, start, end):
    """torch's HistogramObserver._compute_quantization_error (float32 tensors, Python
    float scalars)."""
    bin_width = (float(max_val) - float(min_val)) / bins
    dst_w = bin_width * (end - start + 1) / dst_nbins
    if dst_w == 0.0:
        return 0.0
    src = np.arange(bins)
    begin = ((src - start).astype(F32) * F32(bin_width)).astype(F32)
    endp = (begin + F32(bin_width)).astype(F32)
    dst_begin = np.clip(np.floor_divide(begin, F32(dst_w)), 0, dst_nbins - 1).astype(F32)
    dst_begin_center = ((dst_begin + F32(0.5)) * F32(dst_w)).astype(F32)
    dst_end = np.clip(np.floor_divide(endp, F32(dst_w)), 0, dst_nbins - 1).astype(F32)
    density = (hist / F32(bin_width)).astype(F32)

    def norm(db, de):
        return ((de * de * de - db * db * db) / F32(3)) * density

    half = F32(dst_w / 2)
    total = norm(begin - dst_begin_center, np.full(bins, half, F32))
    total = total + (dst_end - dst_begin - F32(1)) * norm(F32(-dst_w / 2), half)
    dst_end_center = (dst_end * F32(dst_w) + half).astype(F32)
    total = total + norm(F32(-dst_w / 2), endp - dst_end_center)
    return float(np.sum(total.astype(F32), dtype=F32))


def l2_range_search(hist, min_val, max_val, dst_nbins=256):
    """torch's HistogramObserver._non_linear_param_search: shrink [start_bin, end_bin]
    greedily from the side holding less mass while the L2 error falls.  Returns
    (new_min, new_max) as float32."""
    hist = np.asarray(hist, F32)
    bins = hist.size
    bin_width = (F32(max_val) - F32(min_val)) / F32(bins)
    total = float(np.sum(hist, dtype=F32))
    csum = np.cumsum(hist, dtype=F32)
    step, alpha, beta = 1e-5, 0.0, 1.0
    start, end = 0, bins - 1
    norm_min = math.inf
    while alpha < beta:
        na, nb = alpha + step, beta - step
        lo_t, hi_t = F32(na * total), F32(nb * total)
        l, r = start, end
        while l < end and csum[l] < lo_t:
            l += 1
        while r > start and csum[r] > hi_t:
            r -= 1
        ns, ne = start, end
        if (l - start) > (end - r):
            ns, alpha = l, na
        else:
            ne, beta = r, nb
        if ns == start and ne == end:
            continue
        n = _quant_error(hist, min_val, max_val, bins, dst_nbins, ns, ne)
        if n > norm_min:
            break
        norm_min, start, end = n, ns, ne
    return (F32(F32(min_val) + bin_width * F32(start)),
            F32(F32(min_val) + bin_width * F32(end + 1)))


class HistogramObserver:
    """torch.ao.quantization.HistogramObserver (2048 bins, L2 range search), per tensor or
    per channel (``axis``: one histogram per channel, searched independently).

    ``qparams()`` = torch's ``calculate_qparams()`` per tensor.  Other calibrations from the
    same histograms: ``percentile_range(p)``, ``mse_range()``, ``entropy_range()``, and
    ``qparams(method=...)``.  NaN/inf raise NonFiniteError (torch drops inf values).
    """

    def __init__(self, bins=2048, dtype="quint8", scheme="affine", reduce_range=False, *,
                 axis=None):
        self.bins = check_int(bins, "bins", 2)
        self.dtype = check_choice(str(dtype).replace("torch.", ""), "dtype", DTYPES)
        self.scheme = check_choice(scheme, "scheme", ("affine", "symmetric"))
        self.reduce_range = bool(reduce_range)
        self.axis = axis
        self.hist = None  # float32 (C, bins)
        self.min_val = self.max_val = None
        self.dst_nbins = 256

    def update(self, batch):
        k = _float_input(batch, "batch")
        axis = None if self.axis is None else check_axis(self.axis, max(k.array.ndim, 1))
        mn, mx = minmax(k, _view(k.array.shape, axis, None))
        if self.hist is None:
            self.min_val, self.max_val = mn, mx
            self.hist = histc(k.array, self.bins, mn, mx, axis=axis).astype(F32).reshape(
                mn.size, self.bins)
            return self
        if mn.size != self.min_val.size:
            raise ArgumentError(f"batch: has {mn.size} channels, earlier batches "
                                f"{self.min_val.size}")
        new_min, new_max = np.minimum(self.min_val, mn), np.maximum(self.max_val, mx)
        upd = histc(k.array, self.bins, new_min, new_max, axis=axis).astype(F32).reshape(
            mn.size, self.bins)
        for c in range(mn.size):
            omin, omax, h = self.min_val[c], self.max_val[c], self.hist[c]
            if new_min[c] == omin and new_max[c] == omax:
                self.hist[c] = h + upd[c]
            elif omin == omax:
                one = histc(np.asarray([omin], F32), self.bins, new_min[c], new_max[c])
                self.hist[c] = one.astype(F32) * F32(h.sum(dtype=F32)) + upd[c]
            else:
                self.hist[c] = upd[c] + _upscale(h, omin, omax, new_min[c], new_max[c],
                                                 self.bins)
        self.min_val, self.max_val = new_min, new_max
        return self

    __call__ = update

    # -- ranges
    def l2_range(self):
        """Per channel (new_min, new_max) of torch's L2 search."""
        r = [l2_range_search(self.hist[c], self.min_val[c], self.max_val[c], self.dst_nbins)
             for c in range(self.hist.shape[0])]
        return np.array([a for a, _ in r], F32), np.array([b for _, b in r], F32)

    def _edges(self, c):
        return _linspace(self.min_val[c], self.max_val[c], self.bins + 1)

    def percentile_range(self, percentile=99.99):
        """Range holding ``percentile`` % of the mass, trimmed equally from both tails."""
        p = check_float(percentile, "percentile", 50, 100) / 100
        lo, hi = [], []
        for c in range(self.hist.shape[0]):
            cdf = np.cumsum(self.hist[c], dtype=np.float64)
            cdf /= cdf[-1] if cdf[-1] else 1
            e = self._edges(c)
            i = int(np.searchsorted(cdf, (1 - p) / 2, side="left"))
            j = int(np.searchsorted(cdf, 1 - (1 - p) / 2, side="left"))
            lo.append(e[i])
            hi.append(e[min(j + 1, self.bins)])
        return np.array(lo, F32), np.array(hi, F32)

    def _candidates(self, c, n):
        e = self._edges(c)
        centers = (e[:-1].astype(np.float64) + e[1:]) / 2
        w = self.hist[c].astype(np.float64)
        fracs = np.linspace(1.0 / n, 1.0, n)
        return centers, w, fracs

    def mse_range(self, grid=100):
        """Grid search over clipping ranges alpha * [min, max] (alpha = 1/grid ... 1) for the
        smallest expected squared error of the histogram's mass after quantization."""
        grid = check_int(grid, "grid", 1)
        qmin, qmax = qrange(self.dtype, self.reduce_range)
        lo, hi = [], []
        for c in range(self.hist.shape[0]):
            x, w, fracs = self._candidates(c, grid)
            best = (math.inf, self.min_val[c], self.max_val[c])
            for a in fracs:
                mn, mx = F32(self.min_val[c] * a), F32(self.max_val[c] * a)
                s, z = calc_qparams(mn, mx, qmin, qmax, self.scheme, zero_point_symmetric=
                                    128 if self.dtype == "quint8" else 0)
                q = np.clip(np.rint(x / s[0]) + z[0], qmin, qmax)
                err = float(w @ ((q - z[0]) * s[0] - x) ** 2)
                if err < best[0]:
                    best = (err, mn, mx)
            lo.append(best[1])
            hi.append(best[2])
        return np.array(lo, F32), np.array(hi, F32)

    def _abs_hist(self, c, amax, nb):
        """Channel c's histogram of |x| in ``nb`` bins over [0, amax]: each signed bin's count
        spread evenly over its interval and shared by overlap (the difference of the
        piecewise-linear count of x in [-t, t] at the |x| edges t).  The |x| edges are
        torch's float32 linspace like the signed ones, so a one-sided channel's histogram
        comes through unchanged; shares under 0.01 of a count are the two grids' float32
        rounding and are dropped, so no empty |x| bin turns nonzero (the entropy search
        counts nonzero bins).  Dropping each signed bin whole into the |x| bin of its
        centre instead aliases the grids into a comb of empty and doubled bins, which put
        the entropy threshold at up to 41x the minimum KL divergence."""
        e = self._edges(c).astype(np.float64)
        cdf = np.concatenate([[0.0], np.cumsum(self.hist[c], dtype=np.float64)])
        t = _linspace(0, amax, nb + 1).astype(np.float64)
        inside = np.interp(t, e, cdf) - np.interp(-t, e, cdf, left=0.0)
        inside[-1] = cdf[-1]
        h = np.diff(inside)
        h[h < 0.01] = 0.0
        return h

    def entropy_range(self, target_bins=128):
        """TensorRT-style entropy calibration on |x|: the symmetric threshold whose clipped,
        ``target_bins``-level requantized histogram has the smallest KL divergence from
        the original.  Returns (-t, t)."""
        target_bins = check_int(target_bins, "target_bins", 2)
        lo, hi = [], []
        for c in range(self.hist.shape[0]):
            amax = max(abs(float(self.min_val[c])), abs(float(self.max_val[c])))
            nb = self.bins
            width = amax / nb if amax else 1.0
            h = self._abs_hist(c, amax, nb) if amax else self.hist[c].astype(np.float64)
            best_t, best_kl = amax, math.inf
            for i in range(target_bins, nb + 1, max(1, nb // 256)):
                p = h[:i].copy()
                p[i - 1] += h[i:].sum()
                if p.sum() == 0:
                    continue
                chunks = np.array_split(h[:i], target_bins)
                qv = []
                for ch in chunks:
                    nz = np.count_nonzero(ch)
                    qv.append(np.where(ch > 0, ch.sum() / nz if nz else 0, 0))
                q = np.concatenate(qv)
                pn, qn = p / p.sum(), q / q.sum() if q.sum() else q
                m = pn > 0
                if (qn[m] == 0).any():
                    continue
                kl = float(np.sum(pn[m] * np.log(pn[m] / qn[m])))
                if kl < best_kl:
                    best_kl, best_t = kl, (i + 0.5) * width
            lo.append(-best_t)
            hi.append(best_t)
        return np.array(lo, F32), np.array(hi, F32)

    def qparams(self, method="l2", *, bits=None, scheme=None, **kw):
        """(scales, zero_points) from the range of ``method``: "l2" (torch's search, the
        default; equals torch's calculate_qparams per tensor), "percentile", "mse",
        "entropy" or "minmax".  ``bits``/``scheme`` as in ``MinMaxObserver.qparams`` (the
        L2 search then targets 2**bits levels)."""
        if self.hist is None:
            return np.ones(1, F32), np.zeros(1, np.int32)
        method = check_choice(method, "method", ("l2", "percentile", "mse", "entropy", "minmax"))
        if bits is not None:
            from .core import _check_bits
            self.dst_nbins = 1 << _check_bits(bits)
        try:
            mn, mx = {"l2": self.l2_range, "percentile": self.percentile_range,
                      "mse": self.mse_range, "entropy": self.entropy_range,
                      "minmax": lambda: (self.min_val, self.max_val)}[method](**kw)
        finally:
            self.dst_nbins = 256
        return qparams_for(mn, mx, self.dtype, self.reduce_range, scheme or self.scheme, bits)
