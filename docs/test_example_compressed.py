"""A worked example: tests that a compressed model is what it claims to be, with
litecomp.testing (see docs/testing.md).  Copy it next to your own tests and point it at your
checkpoint; this one builds litecomp's tiny example model so that it runs anywhere.  The
``litecomp_report`` fixture comes with litecomp (a pytest plugin it registers)."""

import numpy as np
import pytest

import litecomp
from litecomp import testing

RECIPE = [{"method": "magnitude", "sparsity": 0.5, "targets": ["*linear*.weight"]},
          {"method": "rtn", "bits": 4, "group_size": 32, "ignore": ["embed.*"]}]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    dense = litecomp.examples.tiny_decoder_lm()
    litecomp.save(dense, folder / "dense.safetensors")
    litecomp.compress.compress(folder / "dense.safetensors", folder / "small.safetensors",
                               RECIPE)
    return dense, litecomp.load(folder / "small.safetensors")


def test_the_ffn_is_half_sparse(models):
    _dense, small = models
    testing.assert_sparsity(small, 0.5, targets=["*linear*.weight"], tol=0.001,
                            per_tensor=True)


def test_every_weight_keeps_its_signal(models, litecomp_report):
    dense, small = models
    c = litecomp_report.compare(dense, small, title="dense vs compressed")  # shown on failure
    # 4-bit groups of 32 alone: 23.4 dB or more here; pruned and quantized: 8.9 dB (half the
    # entries, the small ones, carry 1/8 of a uniform weight's energy)
    testing.assert_sqnr(dense, small, 21.0, ignore=["*linear*.weight"])
    assert c.min_sqnr_db > 8.0


def test_outputs_stay_close(models):
    dense, small = models
    deq = litecomp.quant.dequantize_state_dict(small)
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)

    def fc(sd):
        return lambda batch: batch @ sd["fc.weight"].T + sd["fc.bias"]
    testing.assert_outputs_close(fc(dense), fc(deq), [x, 2 * x], min_cosine=0.99)
