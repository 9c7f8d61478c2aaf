"""NumPy twins of the calibrated methods, written step by step after the published
algorithms (IST-DASLab gptq.py ``fasterquant`` and sparsegpt.py ``fasterprune``, llm-awq's
``auto_scale`` / ``auto_clip``, SmoothQuant's ``smooth_lm``), in float32 like them.

Differences from the published code, the same in litecomp's C path:
- the quantizer is litecomp's (torch.ao's qparams; codes clamp(zp + rne(x * (1/s)))), so
  GPTQ's codes are ``litecomp.quant.quantize``'s codes when H = I;
- SparseGPT prunes exactly round(sparsity * n) entries per block (ties: lower flat index).

``hinv=`` hands in the factor U (upper, U^T U = H^-1) so a test can compare the column
loops bit for bit; without it U comes from the published chol -> inverse -> chol(upper).
"""

import numpy as np

F32 = np.float32
EPS = np.finfo(np.float32).eps


def hessian(batches):
    """H = 2/n * sum x x^T (float64 sum), as GPTQ's add_batch computes it."""
    s, n = None, 0
    for x in batches:
        x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
        s = x.T @ x if s is None else s + x.T @ x
        n += x.shape[0]
    return (s * (2.0 / n)).astype(F32), n


def qparams(x, bits, scheme):
    """torch.ao qparams of each row of x (2-D) in float32: (scale, zero point)."""
    qmax = 2 ** bits - 1
    mn = np.minimum(x.min(axis=1), F32(0)).astype(F32)
    mx = np.maximum(x.max(axis=1), F32(0)).astype(F32)
    if scheme == "symmetric":
        amax = np.maximum(-mn, mx)
        s = np.maximum(amax / F32(qmax / 2), EPS).astype(F32)
        z = np.full(s.shape, 2 ** (bits - 1), np.int64)
    else:
        s = np.maximum((mx - mn) / F32(qmax), EPS).astype(F32)
        z = np.clip(-np.round(mn / s), 0, qmax).astype(np.int64)
    return s, z


def quantize_column(w, s, z, bits):
    """(codes, dequantized values) of one column under per-row (s, z)."""
    qmax = 2 ** bits - 1
    inv = (F32(1) / s).astype(F32)
    r = np.clip(np.rint((w * inv).astype(F32)), -z, qmax - z)
    codes = (r + z).astype(np.int64)
    return codes, ((codes - z).astype(F32) * s).astype(F32)


def inverse_factor(H, damp):
    """The published sequence: dead inputs, damping, cholesky, cholesky_inverse, upper
    cholesky -- in float32 NumPy."""
    H = np.array(H, F32)
    dead = np.diagonal(H) == 0
    H[dead, dead] = 1
    d = np.arange(H.shape[0])
    H[d, d] += F32(damp * np.mean(np.diagonal(H), dtype=np.float64))
    L = np.linalg.cholesky(H)
    Li = np.linalg.inv(L)
    Hinv = (Li.T @ Li).astype(F32)
    return np.linalg.cholesky(Hinv).T.astype(F32)  # upper: U^T U = H^-1


def _obs_loop(W, U, block_size, *, bits=None, scheme="symmetric", group_size=None,
              static=None, gidx=None, sparsity=None, nm=None, keep=None):
    """The fasterquant / fasterprune column loop.  Returns (Q, codes, scales, zps, keep)."""
    rows, cols = W.shape
    gs = cols if group_size is None else group_size
    ng = -(-cols // gs) if gidx is None else int(np.max(gidx)) + 1
    scales = np.zeros((rows, ng), F32)
    zps = np.zeros((rows, ng), np.int64)
    if static is not None:
        scales[:], zps[:] = static
    codes = np.zeros((rows, cols), np.int64)
    Q = np.zeros_like(W)
    keep_out = np.ones((rows, cols), bool)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d1 = np.diagonal(U1)
        if sparsity is not None:
            tmp = W1 ** 2 / (d1 ** 2)[None, :]
            k = int(round(sparsity * tmp.size))
            order = np.argsort(tmp.ravel(), kind="stable")
            mask1 = np.zeros(tmp.size, bool)
            mask1[order[:k]] = True
            mask1 = mask1.reshape(tmp.shape)  # True = pruned, as in sparsegpt.py
        elif keep is not None:
            mask1 = ~keep[:, i1:i2]
        else:
            mask1 = np.zeros(W1.shape, bool)
        for i in range(count):
            w = W1[:, i]
            d = U1[i, i]
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                tmp = W1[:, i:i + m] ** 2 / (d1[i:i + m] ** 2)[None, :]
                low = np.argsort(tmp, axis=1, kind="stable")[:, :n]
                np.put_along_axis(mask1[:, i:i + m], low, True, axis=1)
            q = w.copy()
            q[mask1[:, i]] = 0
            if bits is not None:
                col = i1 + i
                if static is None and col % gs == 0:
                    s, z = qparams(W[:, col:col + gs], bits, scheme)
                    scales[:, col // gs], zps[:, col // gs] = s, z
                g = col // gs if gidx is None else gidx[col]
                c, q = quantize_column(q, scales[:, g], zps[:, g], bits)
                codes[:, col] = c
            Q1[:, i] = q
            err1 = ((w - q) / d).astype(F32)
            W1[:, i:] -= np.outer(err1, U1[i, i:]).astype(F32)
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        keep_out[:, i1:i2] = ~mask1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return Q, codes, scales, zps, keep_out


def gptq(w, H, bits=4, group_size=128, *, scheme="symmetric", act_order=False, damp=0.01,
         block_size=128, static_groups=False, hinv=None):
    """GPTQ step by step.  Returns (Q in the original column order, codes in the stored
    order, scales, zero points, perm or None) -- the stored order is the permuted one only
    for act_order with per-column-order groups, as litecomp's QTensor keeps it."""
    W = np.array(w, F32)
    H = np.array(H, F32)
    rows, cols = W.shape
    static = None
    if group_size is None:
        static = qparams(W, bits, scheme)
        static = (static[0][:, None], static[1][:, None])
    dead = np.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    gidx = None
    if static_groups and group_size is not None:
        s, z = zip(*(qparams(W[:, i:i + group_size], bits, scheme)
                     for i in range(0, cols, group_size)))
        static = (np.stack(s, 1), np.stack(z, 1))
    perm = None
    if act_order:
        perm = np.argsort(-np.diagonal(H), kind="stable")
        W = W[:, perm]
        H = H[perm][:, perm]
        if static_groups and group_size is not None:
            gidx = perm // group_size
    U = inverse_factor(H, damp) if hinv is None else np.asarray(hinv, F32)
    Q, codes, scales, zps, _ = _obs_loop(W, U, block_size, bits=bits, scheme=scheme,
                                         group_size=group_size, static=static, gidx=gidx)
    if perm is not None:
        inv = np.argsort(perm)
        Q = Q[:, inv]
        if group_size is None or static_groups:
            codes = codes[:, inv]
            perm = None
    return Q, codes, scales, zps, perm


def sparsegpt(w, H, sparsity=None, *, n=None, m=None, block_size=128, damp=0.01, bits=None,
              group_size=None, scheme="symmetric", mask=None, hinv=None):
    """SparseGPT step by step.  Returns (new weight, keep mask, codes or None)."""
    W = np.array(w, F32)
    H = np.array(H, F32)
    static = None
    if bits is not None and group_size is None:
        s, z = qparams(W, bits, scheme)
        static = (s[:, None], z[:, None])
    dead = np.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    U = inverse_factor(H, damp) if hinv is None else np.asarray(hinv, F32)
    Q, codes, _s, _z, keep = _obs_loop(
        W, U, block_size, bits=bits, scheme=scheme, group_size=group_size, static=static,
        sparsity=sparsity, nm=None if n is None else (n, m), keep=mask)
    return Q, keep, codes if bits is not None else None


# ------------------------------------------------------------------ AWQ, SmoothQuant
def fake_quant_groups(w, bits, group_size, scheme="symmetric"):
    """Round-to-nearest of w (2-D) in groups along the rows (litecomp's quantizer)."""
    rows, cols = w.shape
    gs = cols if group_size is None else group_size
    v = w.reshape(-1, gs)
    s, z = qparams(v, bits, scheme)
    qmax = 2 ** bits - 1
    inv = (F32(1) / s)[:, None]
    c = np.clip(np.rint(v * inv), -z[:, None], qmax - z[:, None]) + z[:, None]
    return ((c - z[:, None]).astype(F32) * s[:, None]).reshape(rows, cols)


def awq_scales(ws, x, bits=4, group_size=128, *, grid=20, scheme="symmetric"):
    """llm-awq's scale search for the Linears ``ws`` sharing input x: for alpha = i / grid,
    s = mean|x|^alpha (>= 1e-4) / sqrt(max * min); the alpha whose Q(W s) / s gives the
    lowest output MSE wins.  Returns (s, best alpha)."""
    x = np.asarray(x, F32).reshape(-1, np.shape(x)[-1])
    x_mean = np.abs(x).mean(axis=0)
    ref = [x @ np.asarray(w, F32).T for w in ws]
    best = (np.inf, None, None)
    for i in range(grid):
        a = i / grid
        s = np.maximum(x_mean ** a, F32(1e-4)).astype(F32)
        s = (s / np.sqrt(s.max() * s.min())).astype(F32)
        loss = 0.0
        for w, r in zip(ws, ref):
            wq = fake_quant_groups(np.asarray(w, F32) * s, bits, group_size, scheme) / s
            loss += float(np.sum((x @ wq.T - r) ** 2, dtype=np.float64))
        loss /= sum(r.size for r in ref)
        if loss < best[0]:
            best = (loss, s, a)
    return best[1], best[2]


def awq_clip(w, x, bits=4, group_size=128, *, grid=20, max_shrink=0.5, scheme="symmetric"):
    """llm-awq's clipping search: per (row, group) the threshold amax * (1 - i / grid),
    i < max_shrink * grid, with the lowest MSE of that group's partial outputs."""
    w = np.asarray(w, F32)
    x = np.asarray(x, F32).reshape(-1, w.shape[1])
    if x.shape[0] > 512:  # llm-awq: n_sample_token = 512, every (T // 512)-th token
        x = x[::x.shape[0] // 512]
    rows, cols = w.shape
    gs = cols if group_size is None else group_size
    G = cols // gs
    wg = w.reshape(rows, G, gs)
    xg = x.reshape(-1, G, gs)
    org = np.einsum("tgk,rgk->rgt", xg, wg)
    amax = np.abs(wg).max(axis=-1)
    best = amax.copy()
    best_err = np.full(amax.shape, np.inf)
    for i in range(int(max_shrink * grid)):
        mv = (amax * F32(1 - i / grid)).astype(F32)
        cw = np.clip(wg, -mv[..., None], mv[..., None])
        qw = fake_quant_groups(cw.reshape(rows, cols), bits, gs, scheme).reshape(rows, G, gs)
        out = np.einsum("tgk,rgk->rgt", xg, qw)
        err = ((out - org) ** 2).mean(axis=-1)
        better = err < best_err
        best_err[better] = err[better]
        best[better] = mv[better]
    return best


def smoothquant_scales(x_absmax, ws, alpha=0.5):
    """SmoothQuant: s_j = max|x_j|^alpha / max_W |w_:j|^(1 - alpha), both floored at 1e-5."""
    wmax = np.max([np.abs(np.asarray(w, F32)).max(axis=0) for w in ws], axis=0)
    wmax = np.maximum(wmax, F32(1e-5))
    s = np.asarray(x_absmax, F32) ** F32(alpha) / wmax ** F32(1 - alpha)
    return np.maximum(s, F32(1e-5)).astype(F32)
