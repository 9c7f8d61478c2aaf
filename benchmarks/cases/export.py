"""Export: K-quant quantization beside the NumPy port of llama.cpp's reference quantizer
(gguf-py has no K-quant quantizer: there is no other Python implementation), and the
streaming compress command's peak memory."""

import numpy as np

import litecomp
from litecomp.quant import gguf as lg
from litecomp.reference import gguf as ref

from ..harness import Run, case


def _weight(quick):
    shape = (64, 512) if quick else (2048, 2048)  # 4M values: a 7B model's k_proj is 16M
    return litecomp.random.normal(shape, 0.0, 0.02, seed=5)


def _kquant(qtype, quick, imatrix=False):
    w = _weight(quick)
    im = (np.random.default_rng(1).uniform(0, 4, w.shape[1]).astype(np.float32)
          if imatrix else None)
    out = np.empty((w.shape[0], w.shape[1] // 256 * lg.FORMATS[qtype][2]), np.uint8)
    return Run(litecomp=lambda: lg.quantize(w, qtype, imatrix=im, out=out),
               anchor=(f"NumPy port of llama.cpp quantize_row_{qtype.lower()}"
                       f"{'_impl' if imatrix else '_ref'} (litecomp.reference.gguf)",
                       lambda: ref.quantize_k(w, qtype, imatrix=im)),
               bytes=w.nbytes + out.nbytes,
               check=lambda a, b: np.testing.assert_array_equal(a, b),
               notes="same bytes; the port is vectorised over groups, one array op per "
                     "element position (the C order); litecomp writes a reused buffer")


@case("GGUF Q4_K quantize, 2048x2048 f32", group="export", repeats=1)
def q4_k(quick):
    return _kquant("Q4_K", quick)


@case("GGUF Q4_K quantize with an importance matrix, 2048x2048", group="export", repeats=1)
def q4_k_imatrix(quick):
    return _kquant("Q4_K", quick, imatrix=True)


@case("GGUF Q6_K quantize, 2048x2048 f32", group="export", repeats=1)
def q6_k(quick):
    return _kquant("Q6_K", quick)


@case("compress int4 (rtn g128), example model file -> file: streaming vs in memory",
      group="export", repeats=1)
def compress_streaming(quick):
    import atexit
    import os
    import shutil
    import tempfile
    from litecomp.compress import compress
    folder = tempfile.mkdtemp(prefix="litecomp-bench-")
    atexit.register(shutil.rmtree, folder, True)  # three model-sized files
    sd = litecomp.examples.tiny_decoder_lm() if quick else litecomp.examples.decoder_lm()
    src = litecomp.save(sd, os.path.join(folder, "m.safetensors"))
    nbytes = sum(v.nbytes for v in sd.values())
    del sd
    stage = {"method": "rtn", "bits": 4, "group_size": 64 if quick else 128}

    def streaming():
        compress(src, os.path.join(folder, "a.safetensors"), stage)
        return litecomp.load(os.path.join(folder, "a.safetensors"))

    def in_memory():
        small, _ = litecomp.quant.quantize_state_dict(litecomp.load(src, mmap=False), stage)
        litecomp.save(small, os.path.join(folder, "b.safetensors"))
        return litecomp.load(os.path.join(folder, "b.safetensors"))

    def check(a, b):
        assert sorted(a) == sorted(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    return Run(litecomp=streaming, anchor=("load + quantize_state_dict + save (in memory)",
                                           in_memory),
               bytes=nbytes, check=check,
               notes="same file; the point is the peak memory column: the streaming run "
                     "holds about two tensors, the in-memory one the whole model and its "
                     "quantized copy (both include loading the result for the check)")
