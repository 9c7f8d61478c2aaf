"""Single-thread CPU time (``time.thread_time``), litecomp beside torch in the same run: the
measure that survives a shared, loaded machine, where wall times of the harness
(``python -m benchmarks``) quantize to the scheduler's slices.  It counts the calling
thread's CPU work only, so both sides run with one thread.

    python -m benchmarks.cputime            # int8 and int4 Linear, quantized DecoderLM
"""

import time
import warnings



def _median_cpu(f, repeats=25):
    from .harness import time_it
    return time_it(f, repeats, clock=time.thread_time, warm_ups=3)


def _row(name, anchor, ours):
    print(f"{name:<34} torch {anchor * 1e6:9.0f} us   litecomp {ours * 1e6:9.0f} us   "
          f"{anchor / ours:5.2f}x", flush=True)


def main():
    import torch

    import litecomp
    import litecomp.quant as Q
    import litecomp.torch as lt

    from .cases.qmatmul import _torch_int4, _torch_linear
    torch.set_num_threads(1)
    litecomp.set_num_threads(1)
    for n, k in [(4096, 4096), (11008, 4096)]:
        _, lin, qlin = _torch_linear(n, k)
        w = lin.weight.detach().numpy()
        i8 = Q.prepare_linear(Q.quantize(w, 8, axis=0), bias=lin.bias.detach().numpy())
        i4 = Q.prepare_linear(Q.quantize(w, 4, group_size=128))
        packed, sz = _torch_int4(torch, lin.weight.detach(), 128)
        for m in (1, 4, 16, 128):
            xt = torch.randn(m, k)
            x = xt.numpy()
            xb = xt.to(torch.bfloat16)
            qp = Q.MinMaxObserver().update(x).qparams(bits=8)
            st = Q.prepare_linear(Q.quantize(w, 8, axis=0), bias=lin.bias.detach().numpy(),
                                  input_qparams=qp)
            with torch.no_grad():
                a = _median_cpu(lambda: qlin(xt))
            _row(f"int8 dynamic {n}x{k} M={m}", a, _median_cpu(lambda: i8(x)))
            _row(f"int8 static  {n}x{k} M={m}", a, _median_cpu(lambda: st(x)))
            _row(f"int4 g128    {n}x{k} M={m}",
                 _median_cpu(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, 128,
                                                                                sz)),
                 _median_cpu(lambda: i4(x)))
    torch.manual_seed(0)
    model = lt.DecoderLM(vocab=1000, d_model=512, heads=8, layers=2, ffn=2048).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                        dtype=torch.qint8)
    dyn = lt.quantize_dynamic(model)
    sta = lt.convert(lt.calibrate(lt.prepare(model),
                                  [torch.randint(0, 1000, (1, 32)) for _ in range(4)]))
    for seq in (1, 32):
        tok = torch.randint(0, 1000, (1, seq))
        with torch.no_grad():
            a = _median_cpu(lambda: theirs(tok), 15)
            _row(f"DecoderLM 1x{seq} int8 dynamic", a, _median_cpu(lambda: dyn(tok), 15))
            _row(f"DecoderLM 1x{seq} int8 static", a, _median_cpu(lambda: sta(tok), 15))


if __name__ == "__main__":
    main()
