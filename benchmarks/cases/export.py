"""Export: K-quant quantization beside the NumPy port of llama.cpp's reference quantizer
(gguf-py has no K-quant quantizer: there is no other Python implementation) and beside
llama.cpp's own C quantizer (ggml-base, built by tools/build_ggml.sh); gguf-py's Q8_0
quantizer and K-quant dequantizer; compressed-tensors' own quantize + pack; the streaming
writer beside safetensors; the streaming compress command's peak memory."""

import numpy as np

import litecomp
from litecomp.quant import gguf as lg
from litecomp.reference import gguf as ref

from ..harness import Run, case, missing, optional_import


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


def _ggml():
    """tests/ggml_lib (llama.cpp's quantizer through ctypes), or the reason it is missing."""
    import importlib
    import os
    import sys
    tests = os.path.join(os.path.dirname(__file__), "..", "..", "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    lib = importlib.import_module("ggml_lib")
    return lib, lib.why_missing()


@case("GGUF Q4_K quantize, 2048x2048 f32: litecomp vs llama.cpp's C quantizer",
      group="export", repeats=3)
def q4_k_llama_cpp(quick):
    w = _weight(quick)
    tid, _blk, nb = lg.FORMATS["Q4_K"]
    out = np.empty((w.shape[0], w.shape[1] // 256 * nb), np.uint8)
    lib, why = _ggml()
    name = "llama.cpp ggml_quantize_chunk (quantize_row_q4_K_ref, one thread)"
    return Run(litecomp=lambda: lg.quantize(w, "Q4_K", out=out),
               anchor=(name, None if why else lambda: lib.quantize(w, tid, nb)),
               missing_reason=why or "", bytes=w.nbytes + out.nbytes,
               check=lambda a, b: np.testing.assert_array_equal(a, b),
               notes="same bytes; llama.cpp's reference path is serial, litecomp's rows run "
                     "on the thread team")


@case("GGUF Q8_0 quantize, 2048x2048 f32: litecomp vs gguf-py", group="export")
def q8_0_gguf_py(quick):
    w = _weight(quick)
    gq = optional_import("gguf.quants")
    g = optional_import("gguf")
    anchor = (("gguf.quants.quantize (NumPy)", lambda: gq.quantize(w, g.GGMLQuantizationType.Q8_0))
              if gq else missing("gguf.quants.quantize", "gguf"))
    out = np.empty((w.shape[0], w.shape[1] // 32 * 34), np.uint8)
    return Run(litecomp=lambda: lg.quantize(w, "Q8_0", out=out), anchor=anchor,
               bytes=w.nbytes + out.nbytes,
               check=lambda a, b: np.testing.assert_array_equal(a, b), notes="same bytes")


@case("GGUF Q4_K dequantize, 2048x2048: litecomp vs gguf-py", group="export")
def q4_k_dequantize(quick):
    w = _weight(quick)
    blocks = lg.quantize(w, "Q4_K")
    gq = optional_import("gguf.quants")
    g = optional_import("gguf")
    anchor = (("gguf.quants.dequantize (NumPy)",
               lambda: gq.dequantize(blocks, g.GGMLQuantizationType.Q4_K))
              if gq else missing("gguf.quants.dequantize", "gguf"))
    return Run(litecomp=lambda: lg.dequantize(blocks, "Q4_K").reshape(w.shape), anchor=anchor,
               bytes=blocks.nbytes + w.nbytes,
               check=lambda a, b: np.testing.assert_array_equal(a, b.reshape(a.shape)),
               notes="same values")


@case("compressed-tensors W4A16 g128 quantize + pack, 2048x2048 f32: litecomp vs "
      "compressed-tensors", group="export")
def ct_pack(quick):
    from litecomp.export import ct
    from litecomp.recipe import stages
    w = _weight(quick)
    stage = stages({"method": "rtn", "bits": 4, "group_size": 64 if quick else 128})[0]

    def ours():
        q = ct.quantize_for(w, stage, "float32")
        return ct.encode_tensor("p", q, "float32", "pack-quantized")["p.weight_packed"]
    torch = optional_import("torch")
    cq = optional_import("compressed_tensors.quantization")
    if torch is None or cq is None:
        anchor = missing("compressed_tensors quantize + pack_to_int32", "compressed-tensors")
    else:
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
        from compressed_tensors.quantization.lifecycle.forward import quantize
        g = stage.options["group_size"]
        args = cq.QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group",
                                   group_size=g)
        q0 = ct.quantize_for(w, stage, "float32")
        scale = torch.from_numpy(q0.scales.reshape(w.shape[0], -1).astype(np.float32))
        zp = torch.zeros_like(scale, dtype=torch.int8)
        tw = torch.from_numpy(w)

        def theirs():
            codes = quantize(tw, scale, zp, args, dtype=torch.int8)
            return pack_to_int32(codes, 4).numpy()
        anchor = ("compressed_tensors quantize + pack_to_int32 (torch), same scales", theirs)
    def check(a, b):
        # the codes, nibble by nibble: compressed-tensors divides by the scale, litecomp
        # multiplies by its reciprocal (torch.ao's rule), so a value within a float32
        # rounding of a .5 tie may land one step apart (measured: 1.3% of words, one step)
        na = (a.view(np.uint32)[..., None] >> np.arange(0, 32, 4, dtype=np.uint32)) & 15
        nb = (b.view(np.uint32)[..., None] >> np.arange(0, 32, 4, dtype=np.uint32)) & 15
        d = np.abs(na.astype(np.int16) - nb.astype(np.int16))
        assert d.max() <= 1 and np.mean(d) < 0.01, (d.max(), np.mean(d))
    return Run(litecomp=ours, anchor=anchor, bytes=w.nbytes + w.size // 2, check=check,
               notes="the same words but for codes one step apart at near-ties (x / s vs "
                     "x * (1/s)); litecomp also computes the scales, the anchor is given them")


@case("streaming write (litecomp.io.StreamWriter), example model: vs safetensors",
      group="export", repeats=3)
def stream_write(quick):
    import atexit
    import os
    import shutil
    import tempfile
    from litecomp.io.stream import StreamWriter
    folder = tempfile.mkdtemp(prefix="litecomp-bench-")
    atexit.register(shutil.rmtree, folder, True)
    sd = litecomp.examples.tiny_decoder_lm() if quick else litecomp.examples.decoder_lm()
    ours, theirs = os.path.join(folder, "a.safetensors"), os.path.join(folder, "b.safetensors")

    def write():
        with StreamWriter(ours) as wr:
            for k, v in sd.items():
                wr.add(k, v)
        return ours
    st = optional_import("safetensors.numpy")
    anchor = (("safetensors.numpy.save_file", lambda: (st.save_file(sd, theirs), theirs)[1])
              if st else missing("safetensors.numpy.save_file", "safetensors"))

    def check(a, b):
        x, y = litecomp.load(a), litecomp.load(b)
        assert sorted(x) == sorted(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    return Run(litecomp=write, anchor=anchor, bytes=sum(v.nbytes for v in sd.values()),
               check=check, notes="same tensors; the streaming writer writes each tensor "
                                  "as it comes (a data file, then the header) and fsyncs")
