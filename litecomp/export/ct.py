"""compressed-tensors checkpoints: the folder transformers' ``from_pretrained`` and vLLM load
(``config.json`` with a ``quantization_config``, ``model.safetensors`` or shards).

Formats written, per Linear ``P`` (a 2-D ``P.weight`` of the state dict):

- ``pack-quantized`` (2-6 bit int, or 8-bit weight-only with ``packed=True``):
  ``P.weight_packed`` int32 [out, ceil(in * bits / 32)] -- the unsigned codes u = q +
  2**(bits-1), element j of a row at bit j * bits of the row's little-endian bit stream
  (4-bit: nibble j % 8 of word j // 8) --, ``P.weight_scale`` [out, in / group_size] or
  [out, 1] per channel or [1] per tensor, ``P.weight_shape`` int64 [2]; asymmetric schemes
  add ``P.weight_zero_point`` (signed, packed the same way along the output axis);
- ``naive-quantized`` (W8A16) and ``int-quantized`` (W8A8): int8 ``P.weight`` + scale;
- ``float-quantized``: float8_e4m3fn ``P.weight`` + scale (per channel or per tensor).

Scales are stored in the model's dtype (``config.json``'s ``torch_dtype``, else the
weights' dtype) and the codes are computed against those stored scales, so what
compressed-tensors decompresses, ``(q - z) * scale`` in the model dtype, is bit for bit what
``QTensor.dequantize`` gives here.  Activation schemes (``activations="int8"`` / ``"fp8"``
on a stage) are dynamic per token, or static per tensor with ``input_scales``
(``P.input_scale``).  Pruned weights ship dense: compressed-tensors 0.15 and vLLM dropped
the sparse formats.
"""

import json
import os
import shutil
import tempfile

import numpy as np

from .. import dtypes as _dt
from ..errors import ArgumentError, FormatError, ShapeError
from ..io.stream import StreamWriter
from ..quant.core import QTensor, cast, quantize, pack_codes, unpack_codes
from ..quant.fp8 import FP8Tensor, quantize_fp8

__all__ = ["compressed_tensors", "read_compressed_tensors", "scheme_of", "encode_tensor",
           "model_dtype", "load_config", "CT_FORMATS"]

CT_FORMATS = ("pack-quantized", "naive-quantized", "int-quantized", "float-quantized")
ACTIVATIONS = ("int8", "fp8")
_HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "generation_config.json", "tokenizer.model")
_DTYPE_NAMES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
                "float": "float32", "half": "float16"}


# ------------------------------------------------------------------ config and dtype
def load_config(config):
    """A Hugging Face config as a dict: a dict as given, or read from a folder's
    config.json or a .json path; None stays None."""
    if config is None or isinstance(config, dict):
        return None if config is None else dict(config)
    path, data = read_json(config, "config.json", "config")
    if not isinstance(data, dict):
        raise FormatError(f"config: {path!r} does not hold a JSON object")
    return data


def read_json(path, default_name, what):
    """(path, parsed JSON) of a file, or of ``default_name`` in a folder; ArgumentError
    when it cannot be read, FormatError when it does not parse."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, default_name)
    try:
        with open(path, encoding="utf-8") as f:
            return path, json.load(f)
    except OSError as exc:
        raise ArgumentError(f"{what}: cannot read {path!r} ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{what}: {path!r} is not valid JSON ({exc})") from None


def _config_folder(config):
    if config is None or isinstance(config, dict):
        return None
    path = os.fspath(config)
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def model_dtype(config, infos):
    """The model's float dtype name: config's torch_dtype / dtype, else the most common
    float dtype of the weights (``infos``: name -> (dtype, shape))."""
    name = (config or {}).get("torch_dtype") or (config or {}).get("dtype")
    if isinstance(name, str):
        name = name.replace("torch.", "")
        if name not in _DTYPE_NAMES:
            raise ArgumentError(f"config: torch_dtype {name!r} is not float32, float16 or "
                                "bfloat16")
        return _DTYPE_NAMES[name]
    counts = {}
    for dt, shape in infos.values():
        n = _dt.name_of(np.dtype(dt))
        if n in ("float32", "float16", "bfloat16"):
            counts[n] = counts.get(n, 0) + int(np.prod(shape, dtype=np.int64))
    return max(counts, key=counts.get) if counts else "float32"


# ------------------------------------------------------------------ schemes
def scheme_of(stage, input_scales=None):
    """(format, weights args, input_activations args) of compressed-tensors for a recipe
    stage (methods rtn and fp8); ArgumentError when compressed-tensors cannot hold it."""
    o = stage.options
    where = stage.where()
    act = o.get("activations")
    if act is not None and act not in ACTIVATIONS:
        raise ArgumentError(f"{where}.activations: {act!r} is not one of "
                            f"{', '.join(ACTIVATIONS)}")
    if stage.method == "fp8":
        axis = o.get("axis", 0)
        if axis not in (0, None):
            raise ArgumentError(f"{where}.axis: fp8 scales are per output channel (axis 0) "
                                f"or per tensor (None), not {axis!r}")
        w = {"num_bits": 8, "type": "float", "symmetric": True,
             "strategy": "channel" if axis == 0 else "tensor", "group_size": None,
             "dynamic": False, "actorder": None, "observer": "minmax"}
        return "float-quantized", w, _act_args(act or None, input_scales, where, fp8=True)
    if stage.method not in ("rtn", "gptq", "awq"):
        raise ArgumentError(f"{where}: method {stage.method!r} has no compressed-tensors "
                            "format (rtn, gptq, awq and fp8 do; pruning stages ship dense)")
    actorder = None
    if stage.method == "gptq" and o.get("act_order"):
        if not o.get("static_groups"):
            raise ArgumentError(f"{where}: gptq with act_order stores its codes in the "
                                "activation order; for compressed-tensors add "
                                "static_groups=True (the groups stay on the original "
                                "columns: compressed-tensors' actorder 'static')")
        actorder = "static"
    bits = o.get("bits", 4 if stage.method in ("gptq", "awq") else 8)
    if stage.method in ("gptq", "awq"):
        o = {"group_size": 128, **o}
    scheme = o.get("scheme", "symmetric")
    group, axis = o.get("group_size"), o.get("axis")
    if group is not None:
        if axis not in (None, 1, -1):
            raise ArgumentError(f"{where}: compressed-tensors groups run along the input "
                                f"axis of a Linear weight (the last), not axis {axis}")
        strategy = "group"
    elif axis == 0:
        strategy = "channel"
    elif axis is None:
        strategy = "tensor"
    else:
        raise ArgumentError(f"{where}.axis: compressed-tensors keeps one scale per output "
                            f"channel (axis 0), per group, or per tensor, not axis {axis}")
    if scheme == "affine" and strategy == "tensor":
        raise ArgumentError(f"{where}: compressed-tensors packs zero points per channel or "
                            "group; an affine per-tensor scheme cannot be stored")
    if act is not None and bits != 8:
        raise ArgumentError(f"{where}.activations: quantized activations go with 8-bit "
                            f"weights (W8A8) here, not {bits}-bit")
    w = {"num_bits": bits, "type": "int", "symmetric": scheme == "symmetric",
         "strategy": strategy, "group_size": group, "dynamic": False, "actorder": actorder,
         "observer": "minmax"}
    if bits < 8:
        fmt = "pack-quantized"
    elif scheme != "symmetric":
        raise ArgumentError(f"{where}: 8-bit compressed-tensors weights are symmetric")
    else:
        fmt = "int-quantized" if act else "naive-quantized"
    return fmt, w, _act_args(act, input_scales, where, fp8=False)


def _act_args(act, input_scales, where, fp8):
    if act is None:
        return None
    if fp8 and act != "fp8":
        raise ArgumentError(f"{where}.activations: fp8 weights go with fp8 activations")
    static = input_scales is not None
    return {"num_bits": 8, "type": "float" if act == "fp8" else "int", "symmetric": True,
            "strategy": "tensor" if static else "token", "group_size": None,
            "dynamic": not static, "actorder": None,
            "observer": "minmax" if static else None}


# ------------------------------------------------------------------ tensors
def _words(packed_bytes, words):
    """uint8 rows (LSB-first bit streams) -> int32 [rows, words], zero-padded."""
    rows, nb = packed_bytes.shape
    out = np.zeros((rows, words * 4), np.uint8)
    out[:, :nb] = packed_bytes
    return out.view("<i4").astype(np.int32)


def encode_tensor(prefix, q, scale_dtype, fmt):
    """{name: array} of one quantized Linear weight in compressed-tensors' layout
    (``q``: a QTensor whose scales are exact in ``scale_dtype``, or an FP8Tensor)."""
    sdt = _dt.dtype_of(scale_dtype)
    if isinstance(q, FP8Tensor):
        out = q.data.shape[0]
        s = q.scales.reshape(-1, 1) if q.axis == 0 else q.scales.reshape(1)
        return {f"{prefix}.weight": q.data, f"{prefix}.weight_scale": cast(s, sdt)
                if scale_dtype != "float32" else s.astype(np.float32)}
    if len(q.shape) != 2:
        raise ShapeError(f"{prefix}.weight: compressed-tensors stores 2-D Linear weights, "
                         f"got shape {q.shape}")
    out_f, in_f = q.shape
    bits = q.bits
    if q.group_size is not None:
        scales = q.scales.reshape(out_f, in_f // q.group_size)
    elif q.axis == 0:
        scales = q.scales.reshape(out_f, 1)
    else:
        scales = q.scales.reshape(1)
    s = scales.astype(np.float32) if scale_dtype == "float32" else cast(scales, sdt)
    res = {}
    if fmt == "pack-quantized":
        # litecomp's codes are the unsigned u = q + 2**(bits-1) compressed-tensors packs
        words = -(-in_f * bits // 32)
        res[f"{prefix}.weight_packed"] = _words(q.data.reshape(out_f, -1), words)
        res[f"{prefix}.weight_shape"] = np.asarray([out_f, in_f], np.int64)
        if q.scheme != "symmetric":
            zp = q.zero_points.reshape(scales.shape).astype(np.uint8)
            zwords = -(-out_f * bits // 32)
            res[f"{prefix}.weight_zero_point"] = np.ascontiguousarray(
                _words(pack_codes(np.ascontiguousarray(zp.T), bits), zwords).T)
    else:
        codes = q.codes().reshape(out_f, in_f).astype(np.int16) - (1 << (bits - 1))
        res[f"{prefix}.weight"] = codes.astype(np.int8)
    res[f"{prefix}.weight_scale"] = s
    return res


def quantize_for(w, stage, scale_dtype):
    """One weight by an rtn / fp8 stage with its scales rounded to ``scale_dtype`` first, so
    the stored scales are the ones the codes were computed with."""
    o = {k: v for k, v in stage.options.items() if k != "activations"}
    if stage.method == "fp8":
        return quantize_fp8(w, axis=o.get("axis", 0), scale_dtype=scale_dtype)
    o.setdefault("bits", 8)
    q = quantize(w, **o)
    if scale_dtype == "float32":
        return q
    s = cast(q.scales, _dt.dtype_of(scale_dtype)).astype(np.float32)
    s = np.maximum(s, np.float32(np.finfo(np.float32).tiny))  # a scale that rounded to 0
    return quantize(w, **o, qparams=(s, q.zero_points.astype(np.int32)))


def _check_linear(name, shape, stage):
    if not name.endswith(".weight") or len(shape) != 2:
        raise ArgumentError(f"{stage.where()}: selects {name!r} (shape {tuple(shape)}); "
                            "compressed-tensors quantizes 2-D Linear weights (<module>.weight)")


# ------------------------------------------------------------------ writing
def _plan(names_infos, plan, input_scales):
    """{module prefix: (stage, fmt, weights args, act args)} for every quantized weight,
    checked before anything is written."""
    from ..select import select
    cands = [n for n, (dt, shape) in names_infos.items()
             if _dt.name_of(np.dtype(dt)) in _dt.WEIGHT_DTYPES and len(shape) >= 2]
    chosen = {}
    for stage in plan:
        scheme = scheme_of(stage, input_scales)
        for name in select(cands, stage.targets, stage.ignore,
                           what="float tensors with 2+ dimensions"):
            if name in chosen:
                continue
            _check_linear(name, names_infos[name][1], stage)
            g = stage.options.get("group_size")
            if g is not None and names_infos[name][1][1] % g:
                raise ShapeError(f"{stage.where()}.group_size: {g} does not divide the "
                                 f"{names_infos[name][1][1]} input features of {name!r}")
            chosen[name] = (stage,) + scheme
    if input_scales is not None:
        for name in chosen:
            if name[:-len(".weight")] not in input_scales and chosen[name][3] is not None:
                raise ArgumentError(f"input_scales: no scale for {name[:-7]!r}, whose "
                                    "activations are quantized statically")
    return {n[:-len(".weight")]: v for n, v in chosen.items()}


def quantization_config(modules, ignore=()):
    """config.json's ``quantization_config`` for {module: (fmt, weights, acts)}: one config
    group per distinct scheme, its targets the module names."""
    groups, fmts = {}, set()
    for mod, (fmt, w, a) in modules.items():
        key = json.dumps([fmt, w, a], sort_keys=True)
        g = groups.setdefault(key, {"targets": [], "format": fmt, "weights": w,
                                    "input_activations": a, "output_activations": None})
        g["targets"].append(mod)
        fmts.add(fmt)
    fmt = fmts.pop() if len(fmts) == 1 else "mixed-precision"
    return {"quant_method": "compressed-tensors", "format": fmt,
            "quantization_status": "compressed",
            "config_groups": {f"group_{i}": g for i, g in enumerate(groups.values())},
            "ignore": list(ignore), "kv_cache_scheme": None, "sparsity_config": {},
            "global_compression_ratio": None}


def compressed_tensors(state_dict, out_dir, *, config=None, recipe=None, input_scales=None,
                       max_shard_size="5GB", progress=None, on_quantized=None,
                       quantizer=None, files_from=None):
    """Write ``state_dict`` as a compressed-tensors folder ``out_dir`` that transformers'
    ``from_pretrained`` (with the compressed-tensors package) and vLLM load.

    ``state_dict``: name -> float arrays (a lazy ``litecomp.open`` checkpoint works and is
    read one tensor at a time), Hugging Face names.  ``recipe``: the quantization stages
    (``rtn`` with bits / group_size / scheme / axis, ``fp8`` with axis, each optionally with
    ``activations="int8"|"fp8"``, ``targets`` / ``ignore``); tensors no stage selects stay
    dense.  ``config``: the model's config (a dict, a config.json, or the HF folder, whose
    tokenizer files are copied too).  ``input_scales``: {module: float} static activation
    scales (per tensor) for the stages with activations.  Every check runs before anything is
    written; the folder appears only when complete (a temporary sibling renamed into place).
    ``progress(name, (dtype, shape))`` is called after each tensor, ``on_quantized(name,
    stage, weight, quantized, stored bytes)`` after each quantized one.  Returns {module:
    format} of the quantized modules.  ``quantizer(name, weight, stage, scale dtype) ->
    QTensor`` replaces round-to-nearest (``litecomp.compress`` passes GPTQ / AWQ codes; a
    QTensor's float32 scales are stored rounded to the model dtype).  ``files_from``: the
    folder whose tokenizer files are copied (default: the config's folder).
    """
    from ..recipe import stages
    cfg = load_config(config)
    infos = _infos(state_dict)
    plan = stages(recipe, family="quant") if recipe is not None else []
    modules = _plan(infos, plan, input_scales) if plan else {}
    dtype = model_dtype(cfg, infos)
    cfg = dict(cfg or {})
    cfg["quantization_config"] = quantization_config(
        {m: v[1:] for m, v in modules.items()})
    cfg.setdefault("torch_dtype", dtype)
    out_dir = os.fspath(out_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise ArgumentError(f"out_dir: folder {parent} does not exist")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ArgumentError(f"out_dir: {out_dir} exists and is not a folder")
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.", suffix=".tmp")
    try:
        with StreamWriter(os.path.join(tmp, "model.safetensors"),
                          max_shard_size=max_shard_size, metadata={"format": "pt"}) as wr:
            for name in infos:
                prefix = name[:-len(".weight")] if name.endswith(".weight") else None
                a = state_dict[name]
                if prefix in modules:
                    stage, fmt, _w, act = modules[prefix]
                    q = quantize_for(a, stage, dtype) if quantizer is None else \
                        quantizer(name, a, stage, dtype)
                    enc = encode_tensor(prefix, q, dtype, fmt)
                    for k, v in enc.items():
                        wr.add(k, v)
                    if on_quantized is not None:
                        on_quantized(name, stage, a, q, sum(v.nbytes for v in enc.values()))
                    if act is not None and input_scales is not None:
                        s = np.asarray([input_scales[prefix]], np.float32)
                        wr.add(f"{prefix}.input_scale",
                               s if dtype == "float32" else cast(s, _dt.dtype_of(dtype)))
                else:
                    wr.add(name, a)
                if progress is not None:
                    progress(name, infos[name])
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
        src = files_from if files_from is not None else _config_folder(config)
        for fname in _HF_FILES:
            if src and os.path.isfile(os.path.join(src, fname)):
                shutil.copy2(os.path.join(src, fname), os.path.join(tmp, fname))
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {m: v[1] for m, v in modules.items()}


def _infos(state_dict):
    if hasattr(state_dict, "info"):
        return {n: state_dict.info(n) for n in state_dict}
    if not hasattr(state_dict, "items"):
        raise ArgumentError(f"state_dict: expected a dict of name -> array, got "
                            f"{type(state_dict).__name__}")
    out = {}
    for n, v in state_dict.items():
        a = np.asarray(v) if not hasattr(v, "shape") else v
        out[n] = (np.dtype(a.dtype) if not hasattr(a, "numpy") else a.numpy().dtype,
                  tuple(a.shape))
    return out


def _swap_into_place(tmp, out_dir):
    """Rename the finished folder to out_dir, replacing an earlier one only now."""
    if os.path.isdir(out_dir):
        old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(out_dir)),
                               prefix=f".{os.path.basename(out_dir)}.", suffix=".old")
        os.rmdir(old)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


# ------------------------------------------------------------------ reading
def read_compressed_tensors(path, *, dtype=None):
    """The dense state dict of a compressed-tensors folder (pack-quantized, naive-/int-
    quantized, float-quantized, dense), each quantized weight decoded as compressed-tensors
    does: ``(q - zero_point) * scale`` in the scale's dtype (``dtype`` overrides).  Returns
    (state dict, config)."""
    from .. import io
    cfg = load_config(path)
    qc = cfg.get("quantization_config") or {}
    groups = qc.get("config_groups") or {}
    by_module = {}
    for g in groups.values():
        for t in g.get("targets", []):
            by_module[t] = (g.get("format") or qc.get("format"), g.get("weights") or {})
    with io.open(path) as ck:
        names = list(ck)
        out, used = {}, set()
        for name in names:
            for suffix in (".weight_packed", ".weight"):
                if not name.endswith(suffix):
                    continue
                prefix = name[:-len(suffix)]
                if prefix not in by_module:
                    continue
                fmt, w = by_module[prefix]
                out[f"{prefix}.weight"] = _decode(ck, prefix, fmt, w, dtype)
                used.update(k for k in names if k.startswith(prefix + ".weight"))
        for name in names:
            if name not in used and name not in out:
                out[name] = np.array(ck[name])
    return out, cfg


def _decode(ck, prefix, fmt, w, dtype):
    scale = np.asarray(ck[f"{prefix}.weight_scale"])
    sdt = scale.dtype if dtype is None else np.dtype(dtype)
    s = scale.astype(np.float32)
    if fmt == "float-quantized":
        v = np.asarray(ck[f"{prefix}.weight"]).astype(np.float32) * s
        return v if sdt == np.float32 else cast(v, sdt)
    bits = int(w.get("num_bits", 8))
    if fmt == "pack-quantized":
        out_f, in_f = (int(v) for v in np.asarray(ck[f"{prefix}.weight_shape"]))
        packed = np.ascontiguousarray(ck[f"{prefix}.weight_packed"]).astype("<i4")
        nbytes = -(-in_f * bits // 8)
        q = unpack_codes(packed.view(np.uint8)[:, :nbytes], in_f, bits).astype(np.int32)
        q -= 1 << (bits - 1)
    else:
        q = np.asarray(ck[f"{prefix}.weight"]).astype(np.int32)
        out_f, in_f = q.shape
    z = np.zeros((out_f, s.shape[-1] if s.ndim == 2 else 1), np.int32)
    if f"{prefix}.weight_zero_point" in ck:
        zp = np.ascontiguousarray(ck[f"{prefix}.weight_zero_point"]).astype("<i4")
        groups = s.shape[-1]
        zb = np.ascontiguousarray(zp.T).view(np.uint8)[:, :-(-out_f * bits // 8)]
        z = (unpack_codes(zb, out_f, bits).T.astype(np.int32) - (1 << (bits - 1)))
        z = z.reshape(out_f, groups)
    if w.get("strategy") == "group":
        g = int(w["group_size"])
        v = ((q.reshape(out_f, in_f // g, g) - np.asarray(z).reshape(out_f, -1, 1))
             .astype(np.float32) * s.reshape(out_f, -1, 1)).reshape(out_f, in_f)
    else:
        v = (q - z.reshape(-1, 1)).astype(np.float32) * s.reshape(-1, 1) if s.size > 1 else \
            (q - z.reshape(-1, 1)).astype(np.float32) * s.reshape(())
    return v if sdt == np.float32 else cast(v, sdt)
