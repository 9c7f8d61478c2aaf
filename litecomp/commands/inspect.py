"""litecomp inspect: what a checkpoint holds, one tensor at a time (huge files work)."""

NAME = "inspect"
HELP = "list a checkpoint's tensors: dtype, shape, numel, sparsity, bytes, and totals"


def add_arguments(p):
    p.add_argument("path", help="a .pth/.pt/.bin, .safetensors, .npz, shard index or folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--key", default=None,
                   help="nested entry of a torch checkpoint dict, e.g. model")


def zeros_of(a) -> int:
    """Exact zeros in ``a`` (-0.0 counts as zero; float kernels handle bf16/fp8)."""
    import numpy as np

    from .. import dtypes as _dt
    from ..core import tensor_stats
    if a.size and _dt.name_of(a.dtype) in _dt.FLOAT_DTYPES:
        return tensor_stats(a).zeros
    return int(a.size - np.count_nonzero(a))


def inspect(path, key=None):
    """{"path", "format", "metadata", "tensors": [...], "total": {...}} of a checkpoint."""
    import os

    from ..io import open as open_checkpoint
    rows = []
    with open_checkpoint(path, key=key) as ck:
        for name in ck:
            a = ck[name]
            z = zeros_of(a)
            rows.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape),
                         "numel": int(a.size), "zeros": z,
                         "sparsity": z / a.size if a.size else 0.0, "bytes": int(a.nbytes)})
            del a
        fmt, meta = ck.format, ck.metadata
    numel = sum(r["numel"] for r in rows)
    zeros = sum(r["zeros"] for r in rows)
    size = (os.path.getsize(path) if os.path.isfile(path) else None)
    return {"path": os.fspath(path), "format": fmt, "metadata": meta, "tensors": rows,
            "total": {"tensors": len(rows), "numel": numel, "zeros": zeros,
                      "sparsity": zeros / numel if numel else 0.0,
                      "bytes": sum(r["bytes"] for r in rows), "file_bytes": size}}


def run(args):
    import json

    from .._table import format_bytes, format_count, render_table
    info = inspect(args.path, key=args.key)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = [[r["name"], r["dtype"], "x".join(map(str, r["shape"])) or "scalar",
             format_count(r["numel"]), f"{100 * r['sparsity']:.2f}%", format_bytes(r["bytes"])]
            for r in info["tensors"]]
    t = info["total"]
    rows.append(["total", f"{t['tensors']} tensors", "", format_count(t["numel"]),
                 f"{100 * t['sparsity']:.2f}%", format_bytes(t["bytes"])])
    print(f"{info['path']}: {info['format']}"
          + (f", {format_bytes(t['file_bytes'])} on disk" if t["file_bytes"] else ""))
    if info["metadata"]:
        print(f"metadata: {json.dumps(info['metadata'])}")
    print(render_table(["name", "dtype", "shape", "numel", "sparsity", "bytes"], rows,
                       align=["<", "<", "<", ">", ">", ">"]))
    return 0
