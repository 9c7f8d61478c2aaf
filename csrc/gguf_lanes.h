/* gguf_lanes.h: the K-quant group fits of gguf_k.c, 16 groups side by side -- lane k of
 * every vector is group k -- for the SIMD paths.  Included by gguf_k.c once per path with
 * LANES(name) (the function's name for that path) and LANES_TARGET (its target attribute);
 * written with the compiler's vector extensions, one 16-float vector per value (one zmm
 * register on AVX-512, two ymm on AVX2).
 *
 * Each lane runs fit_affine / fit_symmetric / fit_symmetric_refine's operations in their
 * order: the same IEEE float operations on the same values, no fused multiply-add
 * (-ffp-contract=off), branches turned into selects whose unselected side is discarded.
 * So the results equal the scalar fits bit for bit; the tests check it on every path. */

#ifndef LC_GGUF_LANES_TYPES
#define LC_GGUF_LANES_TYPES
typedef float vf __attribute__((vector_size(4 * NL)));
typedef int32_t vi __attribute__((vector_size(4 * NL)));
/* lane-wise: m ? a : b for a mask m of -1 / 0 lanes (what vector comparisons give) */
#define VSEL(m, a, b) ((vf)(((m) & (vi)(a)) | (~(m) & (vi)(b))))
#define VSELI(m, a, b) (((m) & (a)) | (~(m) & (b)))
#define VF(c) ((vf){0} + (float)(c))
#define VI(c) ((vi){0} + (int32_t)(c))
#define VABS(a) ((vf)((vi)(a) & 0x7fffffff))
#define VTOF(i) __builtin_convertvector((i), vf)
/* ggml's nearest_int, lane-wise (see gguf_k.c) */
#define VNEAREST(v) ((((vi)((v) + 12582912.0f)) & 0x007fffff) - 0x00400000)
#define VCLAMP(v, lo, hi) VSELI((v) < VI(lo), VI(lo), VSELI((v) > VI(hi), VI(hi), (v)))
#endif

/* group k's element i -> lane k of t[i] */
LANES_TARGET static inline void LANES(transpose)(int n, const float *x, vf *t) {
    for (int i = 0; i < n; i++) {
        vf v;
        for (int k = 0; k < NL; k++) v[k] = x[k * n + i];
        t[i] = v;
    }
}

LANES_TARGET static inline void LANES(store_codes)(int n, const vi *t, vi zero, uint8_t *L) {
    for (int i = 0; i < n; i++) {
        vi v = VSELI(zero, VI(0), t[i]);
        for (int k = 0; k < NL; k++) L[k * n + i] = (uint8_t)v[k];
    }
}

/* H sets of NL lanes at once: the sums are chains of dependent adds, so two independent
 * sets keep the adder busy while one waits */
#define H 2
LANES_TARGET static void LANES(fit_affine_lanes)(const fit_spec *s, const float *x,
                                                 const float *w, uint8_t *L, float *scale_out,
                                                 float *min_out) {
    const int n = s->n, nmax = s->nmax, mad = s->use_mad;
    vf xt[H][32] = {{{0}}}, wt[H][32] = {{{0}}};
    vi Lt[H][32], La[H][32];
    vf mn[H], mx[H], sum_w[H], sum_x[H], flat_min[H], iscale[H], scale[H], best[H];
    vi flat[H];
    for (int h = 0; h < H; h++) {
        LANES(transpose)(n, x + h * NL * n, xt[h]);
        LANES(transpose)(n, w + h * NL * n, wt[h]);
        mn[h] = mx[h] = xt[h][0];
        sum_w[h] = wt[h][0];
        sum_x[h] = sum_w[h] * xt[h][0];
    }
    for (int i = 1; i < n; i++)
        for (int h = 0; h < H; h++) {
            mn[h] = VSEL(xt[h][i] < mn[h], xt[h][i], mn[h]);
            mx[h] = VSEL(xt[h][i] > mx[h], xt[h][i], mx[h]);
            sum_w[h] += wt[h][i];
            sum_x[h] += wt[h][i] * xt[h][i];
        }
    for (int h = 0; h < H; h++) {
        mn[h] = VSEL(mn[h] > 0.0f, VF(0), mn[h]);
        flat[h] = mx[h] == mn[h];
        flat_min[h] = -mn[h];
        iscale[h] = VF(nmax) / (mx[h] - mn[h]);
        scale[h] = VF(1) / iscale[h];
        best[h] = VF(0);
    }
    for (int i = 0; i < n; i++)
        for (int h = 0; h < H; h++) {
            vi l = VCLAMP(VNEAREST(iscale[h] * (xt[h][i] - mn[h])), 0, nmax);
            Lt[h][i] = l;
            vf diff = scale[h] * VTOF(l) + mn[h] - xt[h][i];
            diff = mad ? VABS(diff) : diff * diff;
            best[h] += wt[h][i] * diff;
        }
    for (int is = 0; is <= s->nstep; is++) {
        vf sum_l[H], sum_l2[H], sum_xl[H], err[H], ts[H], tm[H];
        vi up[H];
        for (int h = 0; h < H; h++) {
            iscale[h] = VF(s->rmin + s->rdelta * is + nmax) / (mx[h] - mn[h]);
            sum_l[h] = sum_l2[h] = sum_xl[h] = err[h] = VF(0);
        }
        for (int i = 0; i < n; i++)
            for (int h = 0; h < H; h++) {
                vi l = VCLAMP(VNEAREST(iscale[h] * (xt[h][i] - mn[h])), 0, nmax);
                La[h][i] = l;
                vf lf = VTOF(l), wl = wt[h][i] * lf;
                sum_l[h] += wl;
                sum_l2[h] += wl * lf;
                sum_xl[h] += wl * xt[h][i];
            }
        for (int h = 0; h < H; h++) {
            vf D = sum_w[h] * sum_l2[h] - sum_l[h] * sum_l[h];
            vf a = (sum_w[h] * sum_xl[h] - sum_x[h] * sum_l[h]) / D;
            vf b = (sum_l2[h] * sum_x[h] - sum_l[h] * sum_xl[h]) / D;
            vi neg = b > 0.0f;
            ts[h] = VSEL(neg, sum_xl[h] / sum_l2[h], a);
            tm[h] = VSEL(neg, VF(0), b);
            up[h] = D > 0.0f;
        }
        for (int i = 0; i < n; i++)
            for (int h = 0; h < H; h++) {
                vf diff = ts[h] * VTOF(La[h][i]) + tm[h] - xt[h][i];
                diff = mad ? VABS(diff) : diff * diff;
                err[h] += wt[h][i] * diff;
            }
        for (int h = 0; h < H; h++) {
            up[h] = up[h] & (err[h] < best[h]);
            best[h] = VSEL(up[h], err[h], best[h]);
            scale[h] = VSEL(up[h], ts[h], scale[h]);
            mn[h] = VSEL(up[h], tm[h], mn[h]);
            for (int i = 0; i < n; i++) Lt[h][i] = VSELI(up[h], La[h][i], Lt[h][i]);
        }
    }
    for (int h = 0; h < H; h++) {
        vf sc = VSEL(flat[h], VF(0), scale[h]), m = VSEL(flat[h], flat_min[h], -mn[h]);
        for (int k = 0; k < NL; k++) { scale_out[h * NL + k] = sc[k]; min_out[h * NL + k] = m[k]; }
        LANES(store_codes)(n, Lt[h], flat[h], L + h * NL * n);
    }
}

/* the first largest |x| of each lane and the x it came from */
LANES_TARGET static inline void LANES(absmax)(int n, const vf *xt, vf *amax, vf *max) {
    vf am = VF(0), m = VF(0);
    for (int i = 0; i < n; i++) {
        vf a = VABS(xt[i]);
        vi up = a > am;
        am = VSEL(up, a, am);
        m = VSEL(up, xt[i], m);
    }
    *amax = am;
    *max = m;
}

/* codes + nmax of each lane for scale 1 / iscale, and sum w x l, sum w l^2 in element order */
LANES_TARGET static inline void LANES(sym_sums)(int n, int nmax, const vf *xt, const vf *wt,
                                                vf iscale, vi *L, vf *sumlx, vf *suml2) {
    vf a = VF(0), b = VF(0);
    for (int i = 0; i < n; i++) {
        vi l = VCLAMP(VNEAREST(iscale * xt[i]), -nmax, nmax - 1);
        vf lf = VTOF(l);
        L[i] = l + nmax;
        a += wt[i] * xt[i] * lf;
        b += wt[i] * lf * lf;
    }
    *sumlx = a;
    *suml2 = b;
}

LANES_TARGET static void LANES(fit_symmetric_lanes)(const fit_spec *s, const float *x,
                                                    const float *w, uint8_t *L,
                                                    float *scale_out) {
    const int n = s->n, nmax = s->nmax;
    vf xt[32] = {0}, wt[32] = {0}, amax, max;
    vi Lt[32], La[32];
    LANES(transpose)(n, x, xt);
    LANES(transpose)(n, w, wt);
    LANES(absmax)(n, xt, &amax, &max);
    vf sumlx, suml2;
    LANES(sym_sums)(n, nmax, xt, wt, VF(-nmax) / max, Lt, &sumlx, &suml2);
    vf scale = VSEL(suml2 != 0.0f, sumlx / suml2, VF(0)), best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        LANES(sym_sums)(n, nmax, xt, wt, VF(-(nmax + 0.1f * is)) / max, La, &sumlx, &suml2);
        vi up = (suml2 > 0.0f) & (sumlx * sumlx > best * suml2);
        scale = VSEL(up, sumlx / suml2, scale);
        best = VSEL(up, scale * sumlx, best);
        for (int i = 0; i < n; i++) Lt[i] = VSELI(up, La[i], Lt[i]);
    }
    vi zero = amax < EPS;
    vf sc = VSEL(zero, VF(0), scale);
    for (int k = 0; k < NL; k++) scale_out[k] = sc[k];
    LANES(store_codes)(n, Lt, zero, L);
}

LANES_TARGET static void LANES(fit_refine_lanes)(const fit_spec *s, const float *x, uint8_t *L,
                                                 float *scale_out) {
    const int n = s->n, nmax = s->nmax;
    vf xt[32] = {0}, amax, max;
    vi Lt[32];
    LANES(transpose)(n, x, xt);
    LANES(absmax)(n, xt, &amax, &max);
    vf iscale = VF(-nmax) / max, sumlx = VF(0), suml2 = VF(0);
    for (int i = 0; i < n; i++) {
        vi l = VCLAMP(VNEAREST(iscale * xt[i]), -nmax, nmax - 1);
        vf lf = VTOF(l), w = xt[i] * xt[i];
        Lt[i] = l;
        sumlx += w * xt[i] * lf;
        suml2 += w * lf * lf;
    }
    /* up to five passes, stopping when no lane changed: a pass that changes nothing in a
     * lane leaves nothing for the next, so a lane's result is the scalar one whatever its
     * neighbours do */
    for (int itry = 0; itry < 5; itry++) {
        vi changed = VI(0);
        for (int i = 0; i < n; i++) {
            vf xi = xt[i], w = xi * xi, li = VTOF(Lt[i]);
            vf slx = sumlx - w * xi * li, sl2 = suml2 - w * li * li;
            vi nl = VCLAMP(VNEAREST(xi * sl2 / slx), -nmax, nmax - 1);
            vf nf = VTOF(nl), slx2 = slx + w * xi * nf, sl22 = sl2 + w * nf * nf;
            vi ok = (slx > 0.0f) & (nl != Lt[i]) & (sl22 > 0.0f) &
                    (slx2 * slx2 * suml2 > sumlx * sumlx * sl22);
            Lt[i] = VSELI(ok, nl, Lt[i]);
            sumlx = VSEL(ok, slx2, sumlx);
            suml2 = VSEL(ok, sl22, suml2);
            changed |= ok;
        }
        int any = 0;
        for (int k = 0; k < NL; k++) any |= changed[k];
        if (!any) break;
    }
    vi zero = amax < EPS;
    vf sc = VSEL(zero, VF(0), VSEL(suml2 > 0.0f, sumlx / suml2, VF(0)));
    for (int k = 0; k < NL; k++) scale_out[k] = sc[k];
    for (int i = 0; i < n; i++) Lt[i] += nmax;
    LANES(store_codes)(n, Lt, zero, L);
}

/* H * NL groups */
LANES_TARGET static void LANES(fit_lanes)(const fit_spec *s, const float *x, const float *w,
                                          uint8_t *L, float *scale, float *min) {
    if (s->kind == FIT_AFFINE) {
        LANES(fit_affine_lanes)(s, x, w, L, scale, min);
        return;
    }
    for (int h = 0; h < H; h++) {
        const int64_t o = (int64_t)h * NL * s->n;
        if (s->kind == FIT_SYMMETRIC)
            LANES(fit_symmetric_lanes)(s, x + o, w + o, L + o, scale + h * NL);
        else
            LANES(fit_refine_lanes)(s, x + o, L + o, scale + h * NL);
    }
}
#undef H
