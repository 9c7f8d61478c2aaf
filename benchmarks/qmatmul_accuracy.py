"""How close do swapped models stay?  ``python -m benchmarks.qmatmul_accuracy``

1. The full-size example decoder model (litecomp.examples.decoder_lm, 126M parameters):
   relative L2 error of the logits after ``quantize_model`` (int8; int4 group 128), on
   random tokens.
2. A trained model: an MLP classifier trained on scikit-learn's digits (ships inside the
   scikit-learn package): test accuracy and logit error, float vs int8 vs int4.
"""

import sys
import time


def decoder_errors(small=False):
    import torch
    import litecomp
    import litecomp.torch as lt
    kw = dict(vocab=1000, d_model=64, heads=4, layers=2, ffn=128) if small else {}
    sd = litecomp.examples.decoder_lm(**kw)
    model = lt.DecoderLM(**kw).eval()
    lt.load_numpy_state_dict(model, sd)
    tokens = torch.randint(0, model.fc.out_features, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(tokens)
    rows = []
    for bits, gs in ((8, None), (4, 128)):
        q = lt.quantize_model(model, bits=bits, group_size=gs or 128, inplace=False).eval()
        t = time.perf_counter()
        with torch.no_grad():
            out = q(tokens)
        dt = time.perf_counter() - t
        err = ((out - ref).norm() / ref.norm()).item()
        agree = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
        rows.append((f"int{bits}" + (f" g{gs}" if gs else " per-channel"), err, agree, dt))
    return rows


def digits_accuracy():
    import torch
    from sklearn.datasets import load_digits
    import litecomp.torch as lt
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(X), generator=g)
    tr, te = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(60):
        for i in range(0, 1400, 64):
            idx = tr[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        ref = model(X[te])
    rows = [("float32", 0.0, (ref.argmax(1) == y[te]).float().mean().item())]
    for bits, gs in ((8, None), (4, 64), (4, 32)):
        q = lt.quantize_model(model, bits=bits, group_size=gs or 128, inplace=False).eval()
        with torch.no_grad():
            out = q(X[te])
        rows.append((f"int{bits}" + (f" g{gs}" if gs else " per-channel"),
                     ((out - ref).norm() / ref.norm()).item(),
                     (out.argmax(1) == y[te]).float().mean().item()))
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    small = "--small" in argv
    print("example decoder model" + (" (small)" if small else " (full size, 126M parameters)"))
    print("| weights | logit rel. L2 error | top-1 agreement | forward time |")
    print("|---|---|---|---|")
    for name, err, agree, dt in decoder_errors(small):
        print(f"| {name} | {err:.4f} | {agree:.3f} | {dt:.2f} s |")
    print("\ndigits MLP (64-256-256-10, trained 60 epochs; 397 test images)")
    print("| weights | logit rel. L2 error | test accuracy |")
    print("|---|---|---|")
    for name, err, acc in digits_accuracy():
        print(f"| {name} | {err:.4f} | {acc:.4f} |")


if __name__ == "__main__":
    main()
