"""Quantization: litecomp beside torch.quantize_per_channel, gguf.quants, torch fake quant."""

import numpy as np

import litecomp
import litecomp.quant as Q
from litecomp.quant import gguf as lg

from ..harness import Run, case, missing, optional_import

torch = optional_import("torch")
gguf = optional_import("gguf")


def _fc_weight(quick):
    shape = (1000, 512) if quick else (98631, 512)
    return litecomp.random.normal(shape, 0.0, 0.02, seed=3)


@case("quantize_per_channel int8, fc.weight 98631x512 f32", group="quant")
def per_channel_int8(quick):
    w = _fc_weight(quick)
    obs = Q.PerChannelMinMaxObserver(axis=0, dtype="qint8", scheme="symmetric").update(w)
    s, z = obs.qparams()
    if torch is None:
        anchor = missing("torch.quantize_per_channel", "torch")
    else:
        wt, st, zt = torch.from_numpy(w), torch.from_numpy(s.astype(np.float64)), \
            torch.from_numpy(z.astype(np.int64))
        anchor = ("torch.quantize_per_channel(...).int_repr()",
                  lambda: torch.quantize_per_channel(wt, st, zt, 0, torch.qint8).int_repr())
    return Run(litecomp=lambda: Q.quantize_per_channel(w, s, z, 0, "qint8"),
               anchor=anchor[:2], missing_reason=anchor[2] if len(anchor) > 2 else "",
               bytes=w.nbytes + w.size,
               check=lambda a, b: np.testing.assert_array_equal(a, b.numpy()))


@case("observe + quantize int8 per channel, fc.weight", group="quant")
def observe_quantize(quick):
    w = _fc_weight(quick)
    if torch is None:
        anchor = missing("torch PerChannelMinMaxObserver + quantize_per_channel", "torch")
    else:
        wt = torch.from_numpy(w)

        def torch_path():
            o = torch.ao.quantization.PerChannelMinMaxObserver(
                dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
            o(wt)
            s, z = o.calculate_qparams()
            return torch.quantize_per_channel(wt, s, z, 0, torch.qint8)
        anchor = ("torch PerChannelMinMaxObserver + quantize_per_channel", torch_path)
    return Run(litecomp=lambda: Q.quantize(w, 8, axis=0),
               anchor=anchor[:2], missing_reason=anchor[2] if len(anchor) > 2 else "",
               bytes=2 * w.nbytes + w.size, notes="litecomp reads w twice (min/max, quantize)",
               check=_same_codes_and_scales)


def _same_codes_and_scales(a, b):
    """litecomp's unsigned codes minus its zero points are torch's qint8 codes; same scales."""
    signed = a.data.astype(np.int16) - a.zero_points.reshape(-1, 1)
    np.testing.assert_array_equal(signed, b.int_repr().numpy())
    np.testing.assert_array_equal(a.scales.reshape(-1),
                                  b.q_per_channel_scales().numpy().astype(np.float32))


def _model(quick):
    sd = litecomp.examples.tiny_decoder_lm() if quick else litecomp.examples.decoder_lm()
    return {k: v for k, v in sd.items() if v.shape[-1] % 32 == 0}


def _gguf_case(qtype, quick):
    sd = _model(quick)
    nbytes = sum(v.nbytes for v in sd.values())
    per_block = lg.FORMATS[qtype][2] / 32
    out_bytes = int(sum(v.size for v in sd.values()) * per_block)
    if gguf is None:
        anchor = missing(f"gguf.quants.quantize {qtype}", "gguf")
    else:
        gt = getattr(gguf.GGMLQuantizationType, qtype)
        anchor = (f"gguf.quants.quantize(., {qtype}) per tensor",
                  lambda: [gguf.quants.quantize(v, gt) for v in sd.values()])

    def check(a, b):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    return Run(litecomp=lambda: [lg.quantize(v, qtype) for v in sd.values()],
               anchor=anchor[:2], missing_reason=anchor[2] if len(anchor) > 2 else "",
               bytes=nbytes + out_bytes, check=check,
               notes="full example model (tensors whose last axis divides by 32); fresh "
                     "output arrays each call, so first-touch page faults are included")


@case("GGUF Q4_0, fc.weight into a reused buffer (no page faults)", group="quant")
def gguf_q4_0_reused(quick):
    w = _fc_weight(quick)
    out = np.empty((w.shape[0], w.shape[1] // 32 * 18), np.uint8)
    if gguf is None:
        anchor = missing("gguf.quants.quantize Q4_0", "gguf")
    else:
        anchor = ("gguf.quants.quantize(fc.weight, Q4_0)",
                  lambda: gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0))
    return Run(litecomp=lambda: lg.quantize(w, "Q4_0", out=out), anchor=anchor[:2],
               missing_reason=anchor[2] if len(anchor) > 2 else "",
               bytes=w.nbytes + out.nbytes,
               check=lambda a, b: np.testing.assert_array_equal(a, b),
               notes="the kernel alone: the output buffer is reused across calls")


@case("GGUF Q8_0, full example model", group="quant", repeats=1)
def gguf_q8_0(quick):
    return _gguf_case("Q8_0", quick)


@case("GGUF Q4_0, full example model", group="quant", repeats=1)
def gguf_q4_0(quick):
    return _gguf_case("Q4_0", quick)


@case("fake quant fwd+bwd per channel, 4096x4096", group="quant")
def fake_quant(quick):
    n = 256 if quick else 4096  # 64 MiB per array: larger than the caches
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n)).astype(np.float32)
    dy = rng.standard_normal((n, n)).astype(np.float32)
    s = (np.abs(x).max(1) / 127.5).astype(np.float32)
    z = np.zeros(n, np.int32)

    def ours():
        return (Q.fake_quantize(x, s, z, -128, 127, axis=0),
                Q.fake_quantize_backward(x, dy, s, z, -128, 127, axis=0))
    if torch is None:
        anchor = missing("torch.fake_quantize_per_channel_affine fwd+bwd", "torch")
    else:
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
        st, zt = torch.from_numpy(s), torch.from_numpy(z)

        def theirs():
            xg = xt.detach().requires_grad_()
            y = torch.fake_quantize_per_channel_affine(xg, st, zt, 0, -128, 127)
            y.backward(dyt)
            return y.detach(), xg.grad
        anchor = ("torch.fake_quantize_per_channel_affine fwd+bwd", theirs)

    def check(a, b):
        np.testing.assert_array_equal(a[0], b[0].numpy())
        np.testing.assert_array_equal(a[1], b[1].numpy())
    return Run(litecomp=ours, anchor=anchor[:2],
               missing_reason=anchor[2] if len(anchor) > 2 else "",
               bytes=x.nbytes * 5, check=check)


@case("histogram calibration (HistogramObserver), 8 batches of 64x512x16", group="quant")
def histogram(quick):
    rng = np.random.default_rng(1)
    shape = (4, 512, 16) if quick else (64, 512, 16)
    batches = [(rng.standard_normal(shape) * (1 + i / 4)).astype(np.float32) for i in range(8)]

    def ours():
        o = Q.HistogramObserver()
        for b in batches:
            o.update(b)
        return o.qparams()
    if torch is None:
        anchor = missing("torch HistogramObserver", "torch")
    else:
        tb = [torch.from_numpy(b) for b in batches]

        def theirs():
            o = torch.ao.quantization.HistogramObserver()
            for b in tb:
                o(b)
            return o.calculate_qparams()
        anchor = ("torch.ao HistogramObserver + calculate_qparams", theirs)

    def check(a, b):
        assert a[0][0] == np.float32(b[0].item()) and a[1][0] == b[1].item()
    return Run(litecomp=ours, anchor=anchor[:2],
               missing_reason=anchor[2] if len(anchor) > 2 else "",
               bytes=sum(b.nbytes for b in batches) * 2, check=check,
               notes="qparams identical to torch's")
