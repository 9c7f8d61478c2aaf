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


@pytest.mark.parametrize("scheme", ["affine", "symmetric"])
def test_quantize_model_scheme_gives_the_defined_weights(scheme):
    """quantize_model(scheme=...): each 4-bit layer holds the per-group weight the definition
    gives (test_matmul.independent_groups: torch.ao qparams per group of 32, written without
    litecomp.quant), and its output is x @ that weight.T + bias up to int8 activations."""
    from test_matmul import independent_groups
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16)).eval()
    q = lt.quantize_model(m, bits=4, group_size=32, scheme=scheme, inplace=False)
    assert q._litecomp_quantized == ["0", "2"]
    x = torch.randn(5, 64)
    h = x
    for name, lin in (("0", m[0]), ("2", m[2])):
        ql = q.get_submodule(name)
        assert ql.scheme == scheme
        w = lin.weight.detach().numpy()
        _, _, _, want = independent_groups(w, 4, 32, scheme)
        np.testing.assert_array_equal(ql.dequantized_weight().numpy(), want)
        ref = h.numpy() @ want.T + lin.bias.detach().numpy()
        got = ql(h).detach().numpy()
        # int8 activations per 32 inputs: measured 0.0043-0.0056 relative
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.012
        h = torch.relu(torch.from_numpy(got)) if name == "0" else h
    a = lt.quantize_model(m, bits=4, group_size=32, scheme="affine", inplace=False)
    s = lt.quantize_model(m, bits=4, group_size=32, scheme="symmetric", inplace=False)
    assert not torch.equal(a[0].dequantized_weight(), s[0].dequantized_weight())


def test_quantize_model_older_layers_as_a_list_of_globs():
    lm = lt.DecoderLM(vocab=64, d_model=32, heads=4, layers=2, ffn=64).eval()
    with pytest.warns(DeprecationWarning, match="layers="):
        q = lt.quantize_model(lm, bits=8, layers=["fc", "*.1.linear2"], inplace=False)
    assert q._litecomp_quantized == ["transformer_decoder.layers.1.linear2", "fc"]
    assert type(q.fc) is lt.QuantLinear and type(q.transformer_decoder.layers[0].linear2) is nn.Linear
    with pytest.warns(DeprecationWarning), pytest.raises(ArgumentError, match="match none"):
        lt.quantize_model(lm, layers=["nothing*"], inplace=False)
