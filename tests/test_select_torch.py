"""targets / ignore on torch models: litecomp.torch.select_modules, quantize_model,
activation_stats."""

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import litecomp.torch as lt  # noqa: E402
from litecomp.errors import ArgumentError  # noqa: E402
from litecomp.torch.select import class_names, select_modules  # noqa: E402


class MyLinear(nn.Linear):
    pass


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 16), nn.ReLU(), MyLinear(16, 8),
                         nn.Sequential(nn.Linear(8, 4)))


def test_default_is_every_linear_subclasses_included():
    m = _model()
    assert [n for n, _ in select_modules(m)] == ["1", "3", "4.0"]
    assert "Linear" in class_names(m[3]) and class_names(m[3])[0] == "MyLinear"


def test_class_name_glob_and_regex_targets():
    m = _model()
    assert [n for n, _ in select_modules(m, "Linear")] == ["1", "3", "4.0"]
    assert [n for n, _ in select_modules(m, "MyLinear")] == ["3"]
    assert [n for n, _ in select_modules(m, "Embedding")] == ["0"]
    assert [n for n, _ in select_modules(m, "4.*")] == ["4.0"]
    assert [n for n, _ in select_modules(m, "re:[13]", ignore="MyLinear")] == ["1"]
    with pytest.raises(ArgumentError, match="targets: \\['Conv2d'\\] match none of the"):
        select_modules(m, "Conv2d")


def test_quantize_model_targets_ignore_and_older_layers():
    lm = lt.DecoderLM(vocab=64, d_model=32, heads=4, layers=2, ffn=64).eval()
    q = lt.quantize_model(lm, bits=8, targets="Linear", ignore=["fc"], inplace=False)
    assert q._litecomp_quantized == [
        "transformer_decoder.layers.0.linear1", "transformer_decoder.layers.0.linear2",
        "transformer_decoder.layers.1.linear1", "transformer_decoder.layers.1.linear2"]
    assert type(q.fc) is nn.Linear and type(lm.transformer_decoder.layers[0].linear1) is nn.Linear
    # MultiheadAttention's projections are never candidates
    with pytest.raises(ArgumentError, match="match none of the"):
        lt.quantize_model(lm, targets="*.out_proj", inplace=False)
    with pytest.warns(DeprecationWarning, match="layers="):
        old = lt.quantize_model(lm, bits=8, layers=re.compile("linear1"), inplace=False)
    assert old._litecomp_quantized == ["transformer_decoder.layers.0.linear1",
                                       "transformer_decoder.layers.1.linear1"]
    with pytest.raises(ArgumentError, match="older spelling of targets"):
        lt.quantize_model(lm, layers="fc", targets="fc")


def test_quantize_model_failure_leaves_the_model_unchanged():
    lm = lt.DecoderLM(vocab=64, d_model=32, heads=4, layers=1, ffn=64).eval()
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    with pytest.raises(ArgumentError):
        lt.quantize_model(lm, bits=3)
    assert type(lm.fc) is nn.Linear
    after = lm.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_activation_stats_targets():
    m = _model()
    x = torch.randint(0, 10, (4, 5))
    stats = lt.activation_stats(m, [x], targets="Linear", ignore="4.*")
    assert list(stats) == ["1", "3"]
    h = m[0](x)
    np.testing.assert_allclose(stats["1"].mean_sq, (h.detach().numpy() ** 2).reshape(-1, 8)
                               .mean(axis=0), rtol=1e-6)
