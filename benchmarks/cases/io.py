"""Checkpoint I/O on the example model (482 MiB float32): litecomp.save / load / open
beside torch.save / torch.load and the safetensors package (NumPy API).

bytes = the file's size (read or written).  litecomp's saves also fsync before the atomic
rename; the anchors do neither.  "load" reads every byte into memory (mmap=False);
"map" is the memory-mapped load, which touches no tensor data.
"""

import atexit
import os
import shutil
import tempfile

import litecomp

from ..harness import Run, case, missing, optional_import

_DIR = None
_STATE = {}


def _folder():
    global _DIR
    if _DIR is None:
        _DIR = tempfile.mkdtemp(prefix="litecomp-bench-io-")
        atexit.register(shutil.rmtree, _DIR, True)
    return _DIR


def _model(quick):
    key = "quick" if quick else "full"
    if key not in _STATE:
        _STATE[key] = (litecomp.examples.tiny_decoder_lm() if quick
                       else litecomp.examples.decoder_lm())
    return _STATE[key]


def _file(quick, suffix):
    """The model saved once by litecomp (the input of the load cases)."""
    path = os.path.join(_folder(), f"{'q' if quick else 'f'}-input{suffix}")
    if not os.path.exists(path):
        litecomp.save(_model(quick), path)
    return path


def _torch_sd(quick):
    torch = optional_import("torch")
    if torch is None:
        return None
    from litecomp.torch import from_numpy
    return {k: from_numpy(v) for k, v in _model(quick).items()}


def _numpy(v):
    return v.numpy() if hasattr(v, "numpy") else v


def _same(a, b):
    """Both loads hold the same tensors: names, dtypes, shapes and every value."""
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = a[k], _numpy(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert x.tobytes() == y.tobytes(), k


def _saved_same(sd, ours, theirs):
    """A save check: both files read back (by litecomp) as the state dict that was saved."""
    def check(_a, _b):
        for path in (ours, theirs):
            _same(sd, litecomp.load(path, mmap=False))
    return check


def _same_listing(ours, theirs):
    assert sorted(tuple(s) for _, s in ours) == sorted(tuple(s) for s in theirs)


@case("save .pth, example model", group="io", repeats=3)
def save_pth(quick):
    sd = _model(quick)
    ours, theirs = (os.path.join(_folder(), n) for n in ("save-l.pth", "save-t.pth"))
    tsd = _torch_sd(quick)
    torch = optional_import("torch")
    anchor = (("torch.save", lambda: torch.save(tsd, theirs)) if torch
              else missing("torch.save", "torch"))
    litecomp.save(sd, ours)
    return Run(litecomp=lambda: litecomp.save(sd, ours), anchor=anchor,
               bytes=os.path.getsize(ours), notes="litecomp also fsyncs",
               check=_saved_same(sd, ours, theirs))


@case("load .pth into memory, example model", group="io", repeats=3)
def load_pth(quick):
    path = _file(quick, ".pth")
    torch = optional_import("torch")
    anchor = (("torch.load(weights_only=True)",
               lambda: torch.load(path, weights_only=True)) if torch
              else missing("torch.load", "torch"))
    return Run(litecomp=lambda: litecomp.load(path, mmap=False), anchor=anchor,
               bytes=os.path.getsize(path), check=_same)


@case("map .pth (mmap), example model", group="io")
def map_pth(quick):
    path = _file(quick, ".pth")
    torch = optional_import("torch")
    anchor = (("torch.load(mmap=True, weights_only=True)",
               lambda: torch.load(path, mmap=True, weights_only=True)) if torch
              else missing("torch.load(mmap=True)", "torch"))
    return Run(litecomp=lambda: litecomp.load(path), anchor=anchor, check=_same,
               notes="no tensor data is read")


@case("save .safetensors, example model", group="io", repeats=3)
def save_st(quick):
    sd = _model(quick)
    ours, theirs = (os.path.join(_folder(), n) for n in ("save-l.safetensors",
                                                        "save-s.safetensors"))
    st = optional_import("safetensors.numpy")
    anchor = (("safetensors.numpy.save_file", lambda: st.save_file(sd, theirs)) if st
              else missing("safetensors.numpy.save_file", "safetensors"))
    litecomp.save(sd, ours)
    return Run(litecomp=lambda: litecomp.save(sd, ours), anchor=anchor,
               bytes=os.path.getsize(ours), notes="litecomp also fsyncs",
               check=_saved_same(sd, ours, theirs))


@case("load .safetensors into memory, example model", group="io", repeats=3)
def load_st(quick):
    path = _file(quick, ".safetensors")
    st = optional_import("safetensors.numpy")
    anchor = (("safetensors.numpy.load_file", lambda: st.load_file(path)) if st
              else missing("safetensors.numpy.load_file", "safetensors"))
    return Run(litecomp=lambda: litecomp.load(path, mmap=False), anchor=anchor,
               bytes=os.path.getsize(path), check=_same)


@case("open .safetensors + list tensors, example model", group="io")
def open_st(quick):
    path = _file(quick, ".safetensors")
    sto = optional_import("safetensors")

    def ours():
        with litecomp.open(path) as ck:
            return [ck.info(k) for k in ck]

    def theirs():
        with sto.safe_open(path, framework="np") as f:
            return [f.get_slice(k).get_shape() for k in f.keys()]

    anchor = (("safetensors.safe_open + get_slice", theirs) if sto
              else missing("safetensors.safe_open", "safetensors"))
    return Run(litecomp=ours, anchor=anchor, notes="time independent of file size",
               check=_same_listing)


@case("open .pth + list tensors, example model", group="io")
def open_pth(quick):
    path = _file(quick, ".pth")

    def ours():
        with litecomp.open(path) as ck:
            return [ck.info(k) for k in ck]

    torch = optional_import("torch")
    anchor = (("torch.load(mmap=True) + shapes",
               lambda: [t.shape for t in torch.load(path, mmap=True,
                                                    weights_only=True).values()])
              if torch else missing("torch.load(mmap=True)", "torch"))
    return Run(litecomp=ours, anchor=anchor, notes="time independent of file size",
               check=_same_listing)
