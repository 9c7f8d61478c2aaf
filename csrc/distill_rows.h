/* distill_rows.h: the row algorithms of the distillation losses, written ONCE against a
 * 16-lane vector vocabulary and included by distill.c once per path:
 *
 *   PATH=sf  plain C loops over 16 float lanes     (the scalar path: THE definition)
 *   PATH=vf  AVX-512 intrinsics, the same lane ops  (bit-identical to sf by construction)
 *   PATH=va  AVX2 intrinsics, two 8-lane halves      (likewise)
 *   PATH=sd  plain C loops over 16 double lanes     (float64 inputs; libm exp/log)
 *
 * Before including, distill.c defines VT (vector), RT (real), ATTR (target attribute) and the
 * ops V(name): set load add sub mul div max sel eq gt lt exp log hmax toacc store.  Every op
 * is lane-wise IEEE (no FMA: -ffp-contract=off), exp/log are distill.c's own polynomials in
 * the float paths, and horizontal steps use fixed trees, so sf and vf agree bit for bit.
 *
 * A row is processed in chunks of CH elements.  Pass 1 takes each chunk's maxima, rescales the
 * running double-lane sums once per chunk (online log-sum-exp), then adds the chunk's
 * float-lane sums into them.  Pass 2 writes the gradient (and, for losses whose gradient
 * needs a row constant only known after the loss, pass 2 accumulates and pass 3 writes). */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, PATH)
#define V(name) CAT(v##name, PATH)

/* Effective shift for differences: the running max, or 0 while it is still -inf (all -inf so
 * far), so differences never compute -inf - (-inf). */
static inline double FN(shift)(double m) { return m == -INFINITY ? 0.0 : m; }

/* The per-element terms of the losses whose gradient needs a row constant: returns gk (so
 * that dL/da = q * (gk - c) with c = sum q*gk, up to the constant folded into cd) and sets
 * *lterm, the element's loss term.  Terms where q (or p) is 0 are 0, never 0 * inf. */
ATTR static inline VT FN(elem)(int kind, VT vbeta, VT vbeta1, VT q, VT p, VT lq, VT lp,
                               VT zero, VT *lterm) {
    const VT half = V(set)((RT)0.5);
    if (kind == K_JSD) {
        VT lm = V(log)(V(add)(V(mul)(vbeta, p), V(mul)(vbeta1, q)));
        VT dq = V(sel)(V(eq)(q, zero), zero, V(sub)(lq, lm));
        VT dp = V(sel)(V(eq)(p, zero), zero, V(sub)(lp, lm));
        *lterm = V(add)(V(mul)(vbeta, V(mul)(p, dp)), V(mul)(vbeta1, V(mul)(q, dq)));
        return dq;
    }
    if (kind == K_SKL) {
        VT m = V(add)(V(mul)(vbeta, p), V(mul)(vbeta1, q));
        VT dp = V(sel)(V(eq)(p, zero), zero, V(sub)(lp, V(log)(m)));
        *lterm = V(mul)(p, dp);
        return V(sel)(V(eq)(p, zero), zero, V(div)(p, m));
    }
    if (kind == K_SRKL) {
        VT m = V(add)(V(mul)(vbeta, q), V(mul)(vbeta1, p));
        VT dq = V(sel)(V(eq)(q, zero), zero, V(sub)(lq, V(log)(m)));
        VT rq = V(sel)(V(eq)(q, zero), zero, V(div)(q, m));
        *lterm = V(mul)(q, dq);
        return V(sub)(dq, V(mul)(vbeta, rq));
    }
    /* K_TVD: |q - p| (halved by the caller) and d|q - p|/2 / dq = sign(q - p) / 2 */
    VT d = V(sub)(q, p);
    *lterm = V(sel)(V(lt)(d, zero), V(sub)(zero, d), d);
    return V(sel)(V(gt)(d, zero), half, V(sel)(V(lt)(d, zero), V(sub)(zero, half), zero));
}

/* Pass 1: maxima, sums of exp and the relative weighted sums the loss needs (see rowstats). */
ATTR static void FN(pass1)(const dparams *P, int64_t r, int need, rowstats *st) {
    const int64_t V = P->v, base = r * V;
    const RT invt = (RT)P->inv_t, ninf = (RT)-INFINITY;
    const VT zero = V(set)((RT)0);
    double sa[16] = {0}, sb[16] = {0}, sz[16] = {0}, wa[16] = {0}, wb[16] = {0}, wbb[16] = {0};
    double ma = -INFINITY, mb = -INFINITY, mz = -INFINITY;
    for (int64_t c0 = 0; c0 < V; c0 += CH) {
        const int64_t c1 = c0 + CH < V ? c0 + CH : V;
        VT xa = V(set)(ninf), xb = xa, xz = xa;
        for (int64_t i = c0; i < c1; i += 16) {
            int n = c1 - i < 16 ? (int)(c1 - i) : 16;
            xa = V(max)(xa, V(load)(P->s, P->scode, base + i, n, invt, ninf));
            if (need & NEED_B) xb = V(max)(xb, V(load)(P->t, P->tcode, base + i, n, invt, ninf));
            if (need & NEED_Z) xz = V(max)(xz, V(load)(P->s, P->scode, base + i, n, (RT)1, ninf));
        }
        double na = V(hmax)(xa), nb = V(hmax)(xb), nz = V(hmax)(xz);
        na = na > ma ? na : ma;
        nb = nb > mb ? nb : mb;
        nz = nz > mz ? nz : mz;
        double fa = na == ma ? 1.0 : (double)FN(sexp)((RT)(ma - na));
        double fb = nb == mb ? 1.0 : (double)FN(sexp)((RT)(mb - nb));
        double fz = nz == mz ? 1.0 : (double)FN(sexp)((RT)(mz - nz));
        /* shifts of the relative sums: d_new = d_old - delta */
        double da = FN(shift)(na) - FN(shift)(ma), db = FN(shift)(nb) - FN(shift)(mb);
        for (int l = 0; l < 16; l++) {
            if (need & NEED_WB) wb[l] = sb[l] == 0.0 ? wb[l] : wb[l] + sb[l] * (da - db);
            if (need & NEED_WBB) wbb[l] = sb[l] == 0.0 ? wbb[l] : wbb[l] - sb[l] * db;
            if (need & NEED_WA) wa[l] = sa[l] == 0.0 ? wa[l] : wa[l] - sa[l] * (da - db);
        }
        const VT va = V(set)((RT)na), vb = V(set)((RT)nb), vz = V(set)((RT)nz);
        const VT ea_ = V(set)((RT)FN(shift)(na)), eb_ = V(set)((RT)FN(shift)(nb));
        VT ca = zero, cb = zero, cz = zero, cwa = zero, cwb = zero, cwbb = zero;
        for (int64_t i = c0; i < c1; i += 16) {
            int n = c1 - i < 16 ? (int)(c1 - i) : 16;
            VT a = V(load)(P->s, P->scode, base + i, n, invt, ninf);
            VT e1 = V(sel)(V(eq)(a, V(set)(ninf)), zero, V(exp)(V(sub)(a, va)));
            ca = V(add)(ca, e1);
            if (need & NEED_B) {
                VT b = V(load)(P->t, P->tcode, base + i, n, invt, ninf);
                VT e2 = V(sel)(V(eq)(b, V(set)(ninf)), zero, V(exp)(V(sub)(b, vb)));
                cb = V(add)(cb, e2);
                VT rb = V(sub)(b, eb_), ra = V(sub)(a, ea_);
                if (need & NEED_WB)
                    cwb = V(add)(cwb, V(sel)(V(eq)(e2, zero), zero, V(mul)(e2, V(sub)(rb, ra))));
                if (need & NEED_WBB)
                    cwbb = V(add)(cwbb, V(sel)(V(eq)(e2, zero), zero, V(mul)(e2, rb)));
                if (need & NEED_WA)
                    cwa = V(add)(cwa, V(sel)(V(eq)(e1, zero), zero, V(mul)(e1, V(sub)(ra, rb))));
            }
            if (need & NEED_Z) {
                VT z = V(load)(P->s, P->scode, base + i, n, (RT)1, ninf);
                cz = V(add)(cz, V(sel)(V(eq)(z, V(set)(ninf)), zero, V(exp)(V(sub)(z, vz))));
            }
        }
        V(toacc)(ca, sa, fa);
        if (need & NEED_B) V(toacc)(cb, sb, fb);
        if (need & NEED_WB) V(toacc)(cwb, wb, fb);
        if (need & NEED_WBB) V(toacc)(cwbb, wbb, fb);
        if (need & NEED_WA) V(toacc)(cwa, wa, fa);
        if (need & NEED_Z) V(toacc)(cz, sz, fz);
        ma = na; mb = nb; mz = nz;
    }
    st->ma = ma; st->mb = mb; st->mz = mz;
    st->sa = fold16(sa); st->sb = fold16(sb); st->sz = fold16(sz);
    st->wa = fold16(wa); st->wb = fold16(wb); st->wbb = fold16(wbb);
}

/* MSE and cosine (hidden states or logits): one pass of sums, one of gradient. */
ATTR static void FN(row_vec)(const dparams *P, int64_t r) {
    const int64_t V = P->v, base = r * V;
    const VT zero = V(set)((RT)0);
    double s2[16] = {0}, t2[16] = {0}, st[16] = {0};
    for (int64_t c0 = 0; c0 < V; c0 += CH) {
        const int64_t c1 = c0 + CH < V ? c0 + CH : V;
        VT a2 = zero, b2 = zero, ab = zero;
        for (int64_t i = c0; i < c1; i += 16) {
            int n = c1 - i < 16 ? (int)(c1 - i) : 16;
            VT a = V(load)(P->s, P->scode, base + i, n, (RT)1, (RT)0);
            VT b = V(load)(P->t, P->tcode, base + i, n, (RT)1, (RT)0);
            if (P->kind == K_MSE) {
                VT d = V(sub)(a, b);
                ab = V(add)(ab, V(mul)(d, d));
            } else {
                a2 = V(add)(a2, V(mul)(a, a));
                b2 = V(add)(b2, V(mul)(b, b));
                ab = V(add)(ab, V(mul)(a, b));
            }
        }
        V(toacc)(a2, s2, 1.0);
        V(toacc)(b2, t2, 1.0);
        V(toacc)(ab, st, 1.0);
    }
    double dot = fold16(st), loss, ca, cb;
    if (P->kind == K_MSE) {
        loss = V > 0 ? dot / (double)V : 0.0;
        ca = V > 0 ? 2.0 * P->weight / (double)V : 0.0;
        cb = -ca;
    } else {
        double ns = sqrt(fold16(s2)), nt = sqrt(fold16(t2));
        double ns_ = ns > COS_EPS ? ns : COS_EPS, nt_ = nt > COS_EPS ? nt : COS_EPS;
        double cosv = dot / (ns_ * nt_);
        loss = 1.0 - cosv;
        /* d(1 - cos)/ds = -(t / (ns' nt') - cos s / (ns' ns)), the second term only where
         * the norm is not clamped (torch's cosine_similarity convention). */
        cb = -P->weight / (ns_ * nt_);
        ca = ns > COS_EPS ? P->weight * cosv / (ns_ * ns) : 0.0;
    }
    P->row_loss[r] = loss;
    if (!P->grad) return;
    const VT vca = V(set)((RT)ca), vcb = V(set)((RT)cb);
    for (int64_t i = 0; i < V; i += 16) {
        int n = V - i < 16 ? (int)(V - i) : 16;
        VT a = V(load)(P->s, P->scode, base + i, n, (RT)1, (RT)0);
        VT b = V(load)(P->t, P->tcode, base + i, n, (RT)1, (RT)0);
        V(store)(P->grad, base + i, n, V(add)(V(mul)(vca, a), V(mul)(vcb, b)));
    }
}

/* The losses of one row over two distributions q = softmax(s/T), p = softmax(t/T). */
ATTR static void FN(row_dist)(const dparams *P, int64_t r, int64_t y) {
    const int64_t V = P->v, base = r * V;
    const int kind = P->kind;
    const int hard = y >= 0 && P->alpha > 0;
    const int needz = hard && P->inv_t != 1.0;
    int need = NEED_B | (needz ? NEED_Z : 0);
    if (kind == K_KL || kind == K_CE) need |= NEED_WB;
    if (kind == K_CE) need |= NEED_WBB;
    if (kind == K_RKL) need |= NEED_WA;
    rowstats st;
    FN(pass1)(P, r, need, &st);
    if (!(st.sa > 0 && st.sa < INFINITY) || !(st.ma < INFINITY) || !(st.sz == st.sz)) {
        P->row_bad[r] = 1;
        return;
    }
    if (!(st.sb > 0 && st.sb < INFINITY) || !(st.mb < INFINITY)) {
        P->row_bad[r] = 2;
        return;
    }
    const double lsa = log(st.sa), lsb = log(st.sb);
    const double invt = P->inv_t, w = P->weight, soft = 1.0 - P->alpha;
    double div = 0.0, hardce = 0.0, c = 0.0;
    if (hard) {
        RT zy = V(load1)(P->s, P->scode, base + y);
        hardce = needz ? (st.mz - (double)zy) + log(st.sz)
                       : (st.ma - (double)(zy * (RT)invt)) + lsa;
    }
    const VT zero = V(set)((RT)0), va = V(set)((RT)st.ma), vb = V(set)((RT)st.mb);
    const VT via = V(set)((RT)(1.0 / st.sa)), vib = V(set)((RT)(1.0 / st.sb));
    const VT vla = V(set)((RT)lsa), vlb = V(set)((RT)lsb);
    const VT vbeta = V(set)((RT)P->beta), vbeta1 = V(set)((RT)(1.0 - P->beta));
    const RT invt_ = (RT)invt, ninf = (RT)-INFINITY;
    if (kind == K_KL || kind == K_CE || kind == K_RKL) {
        if (kind == K_RKL) div = st.wa / st.sa - lsa + lsb;
        else div = st.wb / st.sb - lsb + lsa;
        if (kind == K_CE) div += lsb - st.wbb / st.sb;
    } else {
        /* pass 2: the loss and the row constant c of the softmax chain rule */
        double lossl[16] = {0}, cl[16] = {0};
        for (int64_t c0 = 0; c0 < V; c0 += CH) {
            const int64_t c1 = c0 + CH < V ? c0 + CH : V;
            VT cl_ = zero, cc_ = zero;
            for (int64_t i = c0; i < c1; i += 16) {
                int n = c1 - i < 16 ? (int)(c1 - i) : 16;
                VT a = V(load)(P->s, P->scode, base + i, n, invt_, ninf);
                VT b = V(load)(P->t, P->tcode, base + i, n, invt_, ninf);
                VT da = V(sub)(a, va), db = V(sub)(b, vb);
                VT q = V(mul)(V(exp)(da), via), p = V(mul)(V(exp)(db), vib);
                VT lq = V(sub)(da, vla), lp = V(sub)(db, vlb);
                VT lterm, gk = FN(elem)(kind, vbeta, vbeta1, q, p, lq, lp, zero, &lterm);
                cl_ = V(add)(cl_, lterm);
                cc_ = V(add)(cc_, V(mul)(q, gk));
            }
            V(toacc)(cl_, lossl, 1.0);
            V(toacc)(cc_, cl, 1.0);
        }
        div = fold16(lossl);
        c = fold16(cl);
        if (kind == K_TVD) div *= 0.5;
    }
    P->row_loss[r] = P->alpha * hardce + soft * P->tfac * div;
    if (!P->grad) return;

    /* The gradient with respect to the student logits s (a = s/T, so d/ds = (1/T) d/da). */
    double cd = w * soft * P->tfac * invt;
    if (kind == K_JSD) cd *= 1.0 - P->beta;
    if (kind == K_SKL) cd *= -(1.0 - P->beta);
    const VT vcd = V(set)((RT)cd), vc = V(set)((RT)c), vwa = V(set)((RT)(w * P->alpha));
    const VT vz = V(set)((RT)st.mz), viz = V(set)((RT)(needz ? 1.0 / st.sz : 0.0));
    /* RKL: log q - log p - KL(q||p) = (a - ma) - (b - mb) - crkl */
    const VT vcr = V(set)((RT)(div + lsa - lsb));
    for (int64_t i = 0; i < V; i += 16) {
        int n = V - i < 16 ? (int)(V - i) : 16;
        VT a = V(load)(P->s, P->scode, base + i, n, invt_, ninf);
        VT b = V(load)(P->t, P->tcode, base + i, n, invt_, ninf);
        VT da = V(sub)(a, va), db = V(sub)(b, vb);
        VT q = V(mul)(V(exp)(da), via), p = V(mul)(V(exp)(db), vib);
        VT g;
        if (kind == K_KL || kind == K_CE) {
            g = V(mul)(vcd, V(sub)(q, p));
        } else if (kind == K_RKL) {
            VT d = V(sub)(V(sub)(da, db), vcr);
            g = V(sel)(V(eq)(q, zero), zero, V(mul)(vcd, V(mul)(q, d)));
        } else {
            VT lq = V(sub)(da, vla), lp = V(sub)(db, vlb), lterm;
            VT gk = FN(elem)(kind, vbeta, vbeta1, q, p, lq, lp, zero, &lterm);
            g = V(mul)(vcd, V(mul)(q, V(sub)(gk, vc)));
            g = V(sel)(V(eq)(q, zero), zero, g);
        }
        if (hard) {
            VT qz = q;
            if (needz) {
                VT z = V(load)(P->s, P->scode, base + i, n, (RT)1, ninf);
                qz = V(mul)(V(exp)(V(sub)(z, vz)), viz);
            }
            g = V(add)(g, V(mul)(vwa, qz));
        }
        V(store)(P->grad, base + i, n, g);
    }
    if (hard) FN(add1)(P->grad, base + y, (RT)(-(w * P->alpha)));
}

/* Sparse teachers: the dense part of the gradient, grad row = coef * softmax(s/T), and q at
 * one index (the same arithmetic as the vector lanes). */
ATTR static void FN(write_q)(const dparams *P, int64_t r, double ma, double sa, double coef) {
    const int64_t V = P->v, base = r * V;
    const VT va = V(set)((RT)ma), via = V(set)((RT)(1.0 / sa)), vcd = V(set)((RT)coef);
    for (int64_t i = 0; i < V; i += 16) {
        int n = V - i < 16 ? (int)(V - i) : 16;
        VT a = V(load)(P->s, P->scode, base + i, n, (RT)P->inv_t, (RT)-INFINITY);
        V(store)(P->grad, base + i, n, V(mul)(vcd, V(mul)(V(exp)(V(sub)(a, va)), via)));
    }
}

ATTR static RT FN(q1)(const dparams *P, int64_t idx, double ma, double sa) {
    RT a = V(load1)(P->s, P->scode, idx) * (RT)P->inv_t;
    return FN(sexp)(a - (RT)ma) * (RT)(1.0 / sa);
}

#undef FN
#undef V
#undef CAT
#undef CAT_
