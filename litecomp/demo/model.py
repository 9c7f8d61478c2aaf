"""The demo's first step: the example model's parameters, as ``model.named_parameters()``
would list them."""

from .._table import format_bytes, format_count, render_table

NAME = "model"


def parameter_table(state_dict) -> str:
    """The ``model.named_parameters()`` view: name, shape, dtype, numel, bytes, and totals."""
    rows, numel, nbytes = [], 0, 0
    for name, a in state_dict.items():
        rows.append([name, "x".join(map(str, a.shape)) or "scalar", a.dtype.name,
                     format_count(a.size), format_bytes(a.nbytes)])
        numel += a.size
        nbytes += a.nbytes
    rows.append(["total", f"{len(state_dict)} tensors", "", format_count(numel),
                 format_bytes(nbytes)])
    return render_table(["name", "shape", "dtype", "numel", "bytes"], rows,
                        align=["<", "<", "<", ">", ">"])


def run(ctx) -> str:
    """Build the example model and print its parameters."""
    sd = ctx.state_dict
    print(parameter_table(sd))
    numel = sum(a.size for a in sd.values())
    nbytes = sum(a.nbytes for a in sd.values())
    return f"{format_count(numel)} parameters, {format_bytes(nbytes)} float32"
