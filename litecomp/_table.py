"""Plain-text tables and human-readable numbers for the CLI, the demo and the benchmarks."""


def format_bytes(n) -> str:
    """1536 -> '1.5 KiB'; exact below 1 KiB."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def format_count(n) -> str:
    """126321479 -> '126,321,479'."""
    return f"{int(n):,}"


def render_table(headers, rows, align=None) -> str:
    """A fixed-width table.  ``align``: one of '<' or '>' per column (default: numbers right)."""
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    headers = [str(h) for h in headers]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    if align is None:
        align = []
        for i in range(len(headers)):
            col = [r[i] for r in rows if r[i]]
            numeric = col and all(_looks_numeric(c) for c in col)
            align.append(">" if numeric else "<")
    line = lambda cells: "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths))  # noqa: E731
    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(s.rstrip() for s in out)


def _looks_numeric(s: str) -> bool:
    t = s.replace(",", "").replace("%", "").replace("x", "").split(" ")[0]
    try:
        float(t)
        return True
    except ValueError:
        return False
