"""Distil a small DecoderLM from a bigger one, trained briefly on a text file.

    python examples/distill_decoder.py                 # about 3 minutes on 2 cores
    python examples/distill_decoder.py --text my.txt   # any UTF-8 text file
    python examples/distill_decoder.py --quick         # a few seconds: the smoke test

1. a teacher ``litecomp.torch.DecoderLM`` (character-level) learns the text with cross
   entropy;
2. a student with half the layers and half the width learns it the same way, from scratch;
3. the same student, from the same initialisation, for the same number of steps, learns
   from the teacher instead: ``distill_step`` with a ``FusedLinearDistillationLoss`` (the
   teacher's soft next-character distribution at temperature 2, mixed half and half with
   the true next character), which takes hidden states and the heads, never the logits.

It prints the three models' cross entropy on held-out text (the last tenth of the file), in
nats per character: lower is better.  Without ``--text`` it writes a generated text first
(sentences from a small hand-written grammar; nothing is downloaded).
"""

import argparse
import math
import os
import random
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

import litecomp
import litecomp.torch as lt

# ------------------------------------------------------------------ a text to learn
_WHO = [("the old miller", "he"), ("the baker", "he"), ("a young fox", "it"),
        ("my sister", "she"), ("our teacher", "she"), ("a tired sailor", "he"),
        ("the queen", "she"), ("the little girl", "she"), ("the grey cat", "it"),
        ("a farmer", "he"), ("the two boys", "they"), ("my neighbours", "they")]
_DID = ["saw", "found", "carried", "painted", "followed", "lost", "met", "heard", "kept",
        "washed", "counted", "hid"]
_WHAT = ["a red apple", "the silver key", "an old map", "the blue boat", "a small dog",
         "three brown eggs", "the broken clock", "a letter", "the green lantern",
         "some warm bread", "a heavy stone", "the yellow kite"]
_WHERE = ["by the river", "in the garden", "at the market", "under the bridge",
          "near the mill", "behind the church", "on the hill", "in the kitchen"]
_WHEN = ["in the morning", "at night", "before dawn", "after the rain", "on sunday",
         "at noon", "in winter", "every evening"]
_FEEL = ["happy", "tired", "surprised", "quiet", "proud", "hungry"]


def _sentence(rng):
    (who, pron), did, what = rng.choice(_WHO), rng.choice(_DID), rng.choice(_WHAT)
    be = "were" if pron == "they" else "was"
    form = rng.randrange(5)
    if form == 0:
        return f"{who} {did} {what} {rng.choice(_WHERE)}."
    if form == 1:
        return f"{rng.choice(_WHEN)}, {who} {did} {what}."
    if form == 2:
        return f"{who} {did} {what} and {pron} {be} {rng.choice(_FEEL)}."
    if form == 3:
        return f"{who} {did} {what} {rng.choice(_WHEN)}, and then {rng.choice(_DID)} it again."
    return f"when {who} {did} {what} {rng.choice(_WHERE)}, {pron} {be} {rng.choice(_FEEL)}."


def make_text(path, chars=200_000, seed=0):
    """Write about ``chars`` characters of generated sentences, one paragraph per line."""
    rng = random.Random(seed)
    out, n = [], 0
    while n < chars:
        para = " ".join(_sentence(rng) for _ in range(rng.randrange(2, 6)))
        out.append(para)
        n += len(para) + 1
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    return path


# ------------------------------------------------------------------ training
def _batches(ids, batch, seq, gen):
    """Random windows of seq + 1 characters: (inputs, next-character labels)."""
    while True:
        start = torch.randint(0, ids.numel() - seq - 1, (batch,), generator=gen)
        x = torch.stack([ids[s:s + seq + 1] for s in start.tolist()])
        yield x[:, :-1], x[:, 1:]


def held_out_loss(model, ids, seq):
    """Mean next-character cross entropy over consecutive windows of the held-out ids."""
    model.eval()
    n = (ids.numel() - 1) // seq
    x = ids[:n * seq + 1]
    inputs, labels = x[:-1].view(n, seq), x[1:].view(n, seq)
    with torch.no_grad():
        total = sum(F.cross_entropy(model(inputs[i:i + 64]).flatten(0, 1),
                                    labels[i:i + 64].flatten(), reduction="sum").item()
                    for i in range(0, n, 64))
    return total / (n * seq)


def train_ce(model, batches, steps, lr):
    """Plain language-model training: cross entropy on the next character."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


def train_distilled(student, teacher, batches, steps, lr, loss):
    """The same loop, one ``distill_step`` per batch."""
    opt = torch.optim.AdamW(student.parameters(), lr=lr)
    for _ in range(steps):
        lt.distill_step(student, teacher, next(batches), loss, opt)
    return student


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", help="a UTF-8 text file (default: a generated one)")
    p.add_argument("--teacher-steps", type=int, default=400)
    p.add_argument("--student-steps", type=int, default=300)
    p.add_argument("--width", type=int, default=128, help="teacher d_model (student: half)")
    p.add_argument("--layers", type=int, default=4, help="teacher layers (student: half)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the true labels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch and litecomp threads (models this small gain little from more)")
    p.add_argument("--quick", action="store_true", help="tiny models and few steps")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--quick" in argv:                 # smaller defaults; explicit options still win
        p.set_defaults(teacher_steps=20, student_steps=10, width=32, layers=2, seq=32, batch=8)
    a = p.parse_args(argv)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    try:
        with litecomp.threads(a.threads):
            return run(a)
    finally:
        torch.set_num_threads(torch_threads)


def run(a):
    t0 = time.perf_counter()
    tmp = None
    path = a.text
    if path is None:
        tmp = tempfile.mkdtemp(prefix="litecomp-distill-")
        path = make_text(os.path.join(tmp, "text.txt"), 20_000 if a.quick else 200_000, a.seed)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if tmp:
        os.remove(path)
        os.rmdir(tmp)
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text])
    split = int(0.9 * ids.numel())
    train_ids, test_ids = ids[:split], ids[split:]
    if test_ids.numel() < a.seq + 2 or train_ids.numel() < a.seq + 2:
        raise SystemExit(f"--text: {path} is too short for windows of {a.seq} characters")
    vocab, w, n = len(chars), a.width, a.layers

    def model(width, layers, seed):
        torch.manual_seed(seed)
        return lt.DecoderLM(vocab=vocab, d_model=width, heads=4, layers=layers,
                            ffn=4 * width)

    def batches(seed):
        return _batches(train_ids, a.batch, a.seq, torch.Generator().manual_seed(seed))

    print(f"text: {'generated' if tmp else path}, {len(text):,} characters, {vocab} distinct; "
          f"held out: the last {test_ids.numel():,}")
    teacher = train_ce(model(w, n, a.seed), batches(a.seed + 1), a.teacher_steps, 3e-3)
    t_teacher = time.perf_counter() - t0
    # the same student architecture, initialisation and batches, twice
    scratch = train_ce(model(w // 2, max(1, n // 2), a.seed + 2), batches(a.seed + 3),
                       a.student_steps, 3e-3)
    loss = lt.FusedLinearDistillationLoss("kl", temperature=a.temperature, alpha=a.alpha)
    distilled = train_distilled(model(w // 2, max(1, n // 2), a.seed + 2), teacher,
                                batches(a.seed + 3), a.student_steps, 3e-3, loss)
    print(f"{'model':22s} {'layers':>6s} {'width':>5s} {'params':>9s} {'steps':>5s}  "
          f"held-out loss (nats/char)")
    res = {}
    for name, m, steps in (("teacher", teacher, a.teacher_steps),
                           ("student from scratch", scratch, a.student_steps),
                           ("distilled student", distilled, a.student_steps)):
        res[name] = value = held_out_loss(m, test_ids, a.seq)
        print(f"{name:22s} {len(m.transformer_decoder.layers):6d} {m.fc.in_features:5d} "
              f"{sum(p.numel() for p in m.parameters()):9,d} {steps:5d}  {value:.4f}"
              f"  (perplexity {math.exp(value):.2f})")
    print(f"teacher trained in {t_teacher:.0f} s; total {time.perf_counter() - t0:.0f} s")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
