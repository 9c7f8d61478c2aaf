"""Whole-model quantization: a DecoderLM forward quantized by litecomp.torch
(quantize_dynamic, and prepare/convert with static activations) beside the same model
quantized by torch.ao's quantize_dynamic (which leaves attention projections in float)."""

import warnings

from ..harness import Run, case, missing, optional_import


def _decoder_case(mode):
    def setup(quick):
        torch = optional_import("torch")
        if torch is None:
            return Run(litecomp=lambda: None, anchor=missing("torch quantize_dynamic", "torch"))
        import litecomp.torch as lt
        torch.manual_seed(0)
        d, ffn, seq = (64, 128, 8) if quick else (512, 2048, 32)
        model = lt.DecoderLM(vocab=1000, d_model=d, heads=8, layers=2, ffn=ffn).eval()
        tokens = torch.randint(0, 1000, (1, seq))
        if mode == "dynamic":
            ours = lt.quantize_dynamic(model)
        else:
            ours = lt.convert(lt.calibrate(lt.prepare(model),
                                           [torch.randint(0, 1000, (1, seq)) for _ in range(4)]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                            dtype=torch.qint8)

        def run(m):
            with torch.no_grad():
                return m(tokens)
        exact = run(model)

        def check(a, b):
            # both are int8 approximations of the float model's logits (measured at the quick
            # size: litecomp static 0.031, torch dynamic 0.014 relative); both within 10%
            def rel(y):
                return float(torch.linalg.norm(y - exact) / torch.linalg.norm(exact))
            assert rel(a) < 0.1 and rel(b) < 0.1, (rel(a), rel(b))
        return Run(litecomp=lambda: run(ours), anchor=("torch quantize_dynamic DecoderLM",
                                                       lambda: run(theirs)), check=check,
                   notes=f"d_model {d}, ffn {ffn}, 2 layers, vocab 1000, 1 x {seq} tokens")
    return setup


case("DecoderLM forward, int8 dynamic", group="qflows", repeats=25)(_decoder_case("dynamic"))
case("DecoderLM forward, int8 static", group="qflows", repeats=25)(_decoder_case("static"))
