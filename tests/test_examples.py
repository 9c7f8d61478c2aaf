import math

import numpy as np
import pytest

import litecomp
from litecomp import examples


def test_full_size_spec_without_allocating():
    spec = examples.decoder_lm_spec()
    total = sum(math.prod(shape) for _, shape, _ in spec)
    assert total == 126_321_479
    assert total * 4 == 505_285_916  # about 500 MB in float32
    names = [n for n, _, _ in spec]
    assert names[:2] == ["positional_encoding", "embed.weight"]
    assert names[-2:] == ["fc.weight", "fc.bias"]
    shapes = dict((n, s) for n, s, _ in spec)
    assert shapes["embed.weight"] == (98631, 512)
    assert shapes["fc.weight"] == (98631, 512)
    assert shapes["transformer_decoder.layers.5.multihead_attn.in_proj_weight"] == (1536, 512)
    assert shapes["transformer_decoder.layers.0.linear1.weight"] == (2048, 512)
    assert shapes["transformer_decoder.layers.0.linear2.weight"] == (512, 2048)
    assert shapes["transformer_decoder.layers.3.norm3.bias"] == (512,)
    assert len(spec) == 2 + 6 * 18 + 2


def test_deterministic_and_seeded():
    a = examples.tiny_decoder_lm(seed=0)
    b = examples.tiny_decoder_lm(seed=0)
    c = examples.tiny_decoder_lm(seed=1)
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == np.float32
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["fc.weight"], c["fc.weight"])
    # layers are drawn independently (unlike torch's deep-copied clones)
    assert not np.array_equal(a["transformer_decoder.layers.0.linear1.weight"],
                              a["transformer_decoder.layers.1.linear1.weight"])


def test_initialisation_statistics_follow_torch_defaults():
    sd = examples.decoder_lm(vocab=5000, d_model=256, heads=4, layers=1, ffn=1024)
    d = 256
    emb = sd["embed.weight"]
    assert abs(emb.mean()) < 0.01 and emb.std() == pytest.approx(1.0, rel=0.01)
    fc = sd["fc.weight"]
    bound = 1 / math.sqrt(d)
    assert np.abs(fc).max() <= bound and fc.std() == pytest.approx(bound / math.sqrt(3), rel=0.01)
    ipw = sd["transformer_decoder.layers.0.self_attn.in_proj_weight"]
    xb = math.sqrt(6 / (4 * d))
    assert np.abs(ipw).max() <= xb and np.abs(ipw).max() > 0.99 * xb
    l2 = sd["transformer_decoder.layers.0.linear2.weight"]
    assert np.abs(l2).max() <= 1 / math.sqrt(1024)
    assert (sd["transformer_decoder.layers.0.norm1.weight"] == 1).all()
    assert (sd["transformer_decoder.layers.0.self_attn.in_proj_bias"] == 0).all()
    assert (sd["transformer_decoder.layers.0.self_attn.out_proj.bias"] == 0).all()


def test_names_shapes_and_order_match_a_real_torch_module():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class LM(nn.Module):  # built here, independently of litecomp.torch.DecoderLM
        def __init__(self, vocab, d, heads, layers, ffn):
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.positional_encoding = nn.Parameter(torch.zeros(d))
            self.transformer_decoder = nn.TransformerDecoder(
                nn.TransformerDecoderLayer(d, heads, dim_feedforward=ffn), layers)
            self.fc = nn.Linear(d, vocab)

    kw = dict(vocab=98631, d_model=512, heads=8, layers=6, ffn=2048)
    with torch.device("meta"):
        m = LM(98631, 512, 8, 6, 2048)
    want = [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
    got = [(n, s) for n, s, _ in examples.decoder_lm_spec(**kw)]
    assert got == want
    assert sum(p.numel() for p in m.parameters()) == 126_321_479


def test_tiny_model_loads_into_torch_twin_and_runs():
    torch = pytest.importorskip("torch")
    import litecomp.torch as lt
    sd = examples.tiny_decoder_lm()
    m = lt.DecoderLM(vocab=1000, d_model=64, heads=4, layers=2, ffn=128)
    lt.load_numpy_state_dict(m, sd)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), sd[k])
    out = m(torch.randint(0, 1000, (2, 5)))
    assert out.shape == (2, 5, 1000) and torch.isfinite(out).all()


def test_full_size_model_builds():
    sd = examples.decoder_lm()
    assert sum(a.size for a in sd.values()) == 126_321_479
    s = litecomp.tensor_stats(sd["embed.weight"])
    assert s.std == pytest.approx(1.0, rel=1e-3)
