"""litecomp shrink: remove FFN units, heads, hidden channels and vocabulary ids, or factorize
weights, so the model itself (not only its file) gets smaller."""

NAME = "shrink"
HELP = "structured shrinking: FFN units, attention heads, hidden channels, vocabulary, low rank"


def add_arguments(p):
    from .prune import _amount
    p.add_argument("input", metavar="IN", help="checkpoint to read (or a folder with "
                                                "model.safetensors and config.json)")
    p.add_argument("output", metavar="OUT", help="checkpoint to write (a folder: "
                                                 "model.safetensors + config.json)")
    p.add_argument("--config", metavar="FILE|JSON", default=None,
                   help="the model's config: a config.json path or inline JSON such as "
                        "'{\"heads\": 8}' (default: IN's name + .config.json, as this "
                        "command writes it, or config.json beside IN, if any)")
    p.add_argument("--arch", default=None, help="architecture name (default: detected)")
    p.add_argument("--ffn", type=_amount, default=None, metavar="AMOUNT",
                   help="FFN units to remove per layer: a fraction (0.25) or a count")
    p.add_argument("--heads", type=_amount, default=None, metavar="AMOUNT",
                   help="query heads to remove per attention block: a count (2) or a fraction")
    p.add_argument("--gqa", choices=("groups", "query"), default="groups",
                   help="with GQA: remove whole key/value groups (default) or query heads "
                        "within every group")
    p.add_argument("--hidden", type=_amount, default=None, metavar="AMOUNT",
                   help="residual-stream channels to remove")
    p.add_argument("--vocab-from", metavar="FILE", default=None,
                   help="token ids of a corpus (ids.npy, or corpus.txt of whitespace-separated "
                        "ids): keep the ids it uses")
    p.add_argument("--vocab-size", type=int, default=None, metavar="N",
                   help="with --vocab-from: keep the N most frequent ids")
    p.add_argument("--rank", type=_amount, default=None, metavar="R",
                   help="factorize FFN weights (or --targets) at rank R: a count or a "
                        "fraction of full rank")
    p.add_argument("--targets", default=None, metavar="PATTERNS",
                   help="comma-separated weights for --rank (default: the FFN weights)")
    p.add_argument("--criterion", choices=("l2", "l1"), default="l2",
                   help="unit scores: L2 (default) or L1 norm of the coupled slices")
    p.add_argument("--granularity", choices=("layer", "global"), default="layer",
                   help="--ffn/--heads amounts per layer (default) or over all layers")
    p.add_argument("--round-to", type=int, default=1, metavar="N",
                   help="keep multiples of N units (e.g. 8 or 64)")
    p.add_argument("--recipe", metavar="FILE", default=None,
                   help="a recipe (.json/.yaml) of shrink stages instead of the options")
    p.add_argument("--config-out", metavar="FILE", default=None,
                   help="where to write the new config (default: OUT/config.json for a "
                        "folder, else OUT's name + .config.json)")


def _read_config(args):
    import json
    import os
    from ..errors import ArgumentError
    text = args.config
    if text is None:
        if os.path.isdir(args.input):
            found = [os.path.join(args.input, "config.json")]
        else:  # the name this command gives the config it writes, then the folder's
            from ..arch import config_path
            found = [config_path(args.input),
                     os.path.join(os.path.dirname(args.input) or ".", "config.json")]
        found = [f for f in found if os.path.exists(f)]
        if not found:
            return None
        text = found[0]
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArgumentError(f"--config: is not valid JSON ({exc})") from None
    try:
        with open(text, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise ArgumentError(f"--config: cannot read {text!r} ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ArgumentError(f"--config: {text!r} is not valid JSON ({exc})") from None


def plan_of(args, a, sd):
    """The recipe stages the options describe (vocabulary first, low rank last)."""
    from ..errors import ArgumentError
    plan = []
    if args.vocab_from:
        st = {"method": "shrink_vocab", "token_ids": args.vocab_from}
        if args.vocab_size is not None:
            st["vocab_size"] = args.vocab_size
        plan.append(st)
    elif args.vocab_size is not None:
        raise ArgumentError("--vocab-size: needs --vocab-from (the corpus to count ids in)")
    common = {"criterion": args.criterion, "round_to": args.round_to}
    if args.ffn is not None:
        plan.append({"method": "shrink_ffn", "amount": args.ffn,
                     "granularity": args.granularity, **common})
    if args.heads is not None:
        plan.append({"method": "shrink_heads", "amount": args.heads, "gqa": args.gqa,
                     "granularity": args.granularity, **common})
    if args.hidden is not None:
        plan.append({"method": "shrink_hidden", "amount": args.hidden, **common})
    if args.rank is not None:
        if args.targets:
            targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        else:
            n = a.num_layers(sd)
            targets = [a.in_layer(s, i).name for i in range(n) for s in a.ffn.slices
                       if s.name.endswith(".weight")]
        rank = args.rank
        plan.append({"method": "lowrank", "rank": rank, "targets": targets})
    if not plan:
        raise ArgumentError("shrink: nothing to do; give --ffn, --heads, --hidden, "
                            "--vocab-from, --rank or --recipe")
    return plan


def _groups(sd, a):
    """{row label: (params, bytes)}: each layer, then the model-level tensors."""
    import re
    n = a.num_layers(sd)
    pat = re.compile(re.escape(a.layer.format(p=a.prefix, i="<<I>>"))
                     .replace("<<I>>", r"(\d+)") + r"\.")
    rows = {}
    for k, v in sd.items():
        m = pat.match(k)
        label = m.group(0)[:-1] if m else k.rsplit(".", 1)[0] if "." in k else k
        p, b = rows.get(label, (0, 0))
        rows[label] = (p + v.size, b + v.nbytes)
    del n
    return rows


def table(before_sd, after_sd, a) -> str:
    from .._table import format_bytes, format_count, render_table
    b, c = _groups(before_sd, a), _groups(after_sd, a)
    rows = []
    for label in list(b) + [x for x in c if x not in b]:
        pb, bb = b.get(label, (0, 0))
        pa, ba = c.get(label, (0, 0))
        rows.append([label, format_count(pb), format_count(pa), format_bytes(bb),
                     format_bytes(ba), f"{pa / pb:.0%}" if pb else "new"])
    tb = sum(v[0] for v in b.values()), sum(v[1] for v in b.values())
    ta = sum(v[0] for v in c.values()), sum(v[1] for v in c.values())
    rows.append(["total", format_count(tb[0]), format_count(ta[0]), format_bytes(tb[1]),
                 format_bytes(ta[1]), f"{ta[0] / tb[0]:.0%}" if tb[0] else ""])
    return render_table(["group", "params before", "params after", "bytes before",
                         "bytes after", "kept"], rows, align=["<", ">", ">", ">", ">", ">"])


def run(args):
    import os

    from .. import arch as _arch, load, recipe, save
    from .._table import format_bytes
    from ..errors import ArgumentError
    from ..shrink import shrink_state_dict
    cfg = _read_config(args)
    src = args.input
    if os.path.isdir(src):
        src = os.path.join(src, "model.safetensors")
    sd = load(src)
    a = _arch.get(args.arch).bind(cfg) if args.arch else _arch.detect(sd, cfg)
    if args.arch:
        a = a.bind(cfg, next((p for p in a.prefixes if any(p + m in sd for m in a.markers)),
                             a.prefix))
    if args.recipe:
        if any(x is not None for x in (args.ffn, args.heads, args.hidden, args.vocab_from,
                                       args.rank)):
            raise ArgumentError("--recipe: replaces --ffn/--heads/--hidden/--vocab-from/--rank;"
                                " give one or the other")
        plan = recipe.stages(args.recipe, family="shrink")
    else:
        plan = plan_of(args, a, sd)
    if any(getattr(st, "method", None) == "shrink_heads" or
           (isinstance(st, dict) and st.get("method") == "shrink_heads") for st in plan) \
            and a.attention and a.get("heads") is None:
        key = a.keys.get("heads", "heads")
        why = (" (an nn.TransformerDecoder's state dict does not carry nhead; `litecomp demo "
               "--out DIR` writes DIR/model.config.json beside the example model)"
               if a.name == "decoder_lm" else "")
        raise ArgumentError(f"--config: {key!r} is missing: how many heads {args.input}'s "
                            f"attention has is not in a state dict{why}; give --config "
                            f"'{{\"{key}\": N}}', N the heads the model was built with, or put "
                            "a config.json beside it")
    res = shrink_state_dict(sd, plan, arch=a)
    out = args.output
    folder = out.endswith(os.sep) or os.path.isdir(out)
    model_path = os.path.join(out, "model.safetensors") if folder else out
    cfg_path = args.config_out or _arch.config_path(out)
    if os.path.abspath(cfg_path) == os.path.abspath(os.path.join(
            os.path.dirname(os.path.abspath(src)), "config.json")) and args.config_out is None:
        raise ArgumentError(f"OUT: the new config would overwrite the input's {cfg_path!r}; "
                            "write to another folder or give --config-out")
    if folder:
        os.makedirs(out, exist_ok=True)
    save(res.state_dict, model_path)
    _arch.save_config(res.config, cfg_path)
    print(table(sd, res.state_dict, a))
    rows = getattr(res, "lowrank", None)
    if rows:
        print("\nlow rank: " + ", ".join(f"{r.name} rank {r.rank} (error {r.error:.3f})"
                                         if not r.note else f"{r.name} {r.note}" for r in rows))
    print(f"\n{args.input}: {format_bytes(os.path.getsize(src))} -> {model_path}: "
          f"{format_bytes(os.path.getsize(model_path))}; config: {cfg_path}"
          + ("" if res.loadable else " (per-layer sizes: load with "
             "litecomp.torch.apply_shrink)"))
    key = a.keys.get("heads")
    if a.attention and key and res.arch.get("heads") is None:
        print(f"note: {cfg_path} has no {key!r}: {args.input}'s head count was not given "
              f"(--config '{{\"{key}\": N}}'); add it before building the model from it")
    return 0
