"""targets / ignore (litecomp.select), recipe stages (litecomp.recipe), and the state-dict
workflows that take them (prune.prune_state_dict, quant.quantize_state_dict)."""

import json
import re
import warnings

import numpy as np
import pytest

import litecomp
from litecomp import prune, recipe
from litecomp import quant as Q
from litecomp.errors import ArgumentError, FormatError, ShapeError
from litecomp.select import Selector, patterns, select

NAMES = ["embed.weight", "layers.0.fc1.weight", "layers.0.fc1.bias", "layers.1.fc1.weight",
         "layers.10.fc1.weight", "fc.weight"]


def test_star_crosses_dots():
    assert select(NAMES, "*.weight") == [n for n in NAMES if n.endswith(".weight")]


def test_glob_full_match():
    # "fc.weight" matches only itself, not "layers.0.fc1.weight" or a suffix
    assert select(NAMES, "fc.weight") == ["fc.weight"]
    assert select(NAMES, "layers.*.fc1.weight") == ["layers.0.fc1.weight",
                                                    "layers.1.fc1.weight",
                                                    "layers.10.fc1.weight"]
    assert select(NAMES, "layers.?.fc1.*") == ["layers.0.fc1.weight", "layers.0.fc1.bias",
                                               "layers.1.fc1.weight"]


def test_regex_anchored():
    assert select(NAMES, "re:layers\\.1\\..*") == ["layers.1.fc1.weight"]  # not layers.10


def test_regex_full_match_only():
    with pytest.raises(ArgumentError, match="match none"):
        select(NAMES, "re:fc")  # a search would find it; a full match does not
    assert select(NAMES, re.compile(r"layers\.\d+\.fc1\.bias")) == ["layers.0.fc1.bias"]


def test_ignore_removes_and_targets_none_means_all():
    assert select(NAMES, None, ["*.bias", "embed.*"]) == [
        "layers.0.fc1.weight", "layers.1.fc1.weight", "layers.10.fc1.weight", "fc.weight"]
    assert select(NAMES) == NAMES
    assert select(NAMES, ["fc.weight", "embed.weight"], "fc.*") == ["embed.weight"]


def test_class_names_match_when_given():
    classes = {n: ("Linear", "Module") if "fc" in n else ("Embedding", "Module") for n in NAMES}
    got = select(NAMES, "Linear", "layers.1*", classes_of=classes.get)
    assert got == ["layers.0.fc1.weight", "layers.0.fc1.bias", "fc.weight"]
    assert select(NAMES, "Linear", strict=False) == []  # no classes: only a glob


def test_unmatched_targets_raise_or_warn():
    with pytest.raises(ArgumentError, match=r"targets: \['attn\.\*'\] match none of the 6"):
        select(NAMES, "attn.*")
    with pytest.warns(UserWarning, match="'attn.*' matches none"):
        assert select(NAMES, ["attn.*", "fc.weight"]) == ["fc.weight"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select(NAMES, "attn.*", strict=False) == []
        assert select(NAMES, None, "nothing.matches.this") == NAMES  # ignore may miss


@pytest.mark.parametrize("bad, msg", [(3, "expected a pattern"), ([""], "non-empty"),
                                      (["re:("], "not a valid regular expression"),
                                      ([None], "non-empty strings")])
def test_bad_patterns(bad, msg):
    with pytest.raises(ArgumentError, match=msg):
        patterns(bad)
    with pytest.raises(ArgumentError, match="ignore: "):
        Selector(None, bad)


def test_selector_is_a_predicate():
    sel = Selector(["*.weight"], ["embed.*"])
    assert [n for n in NAMES if sel(n)] == select(NAMES, "*.weight", "embed.*")
    assert sel.unmatched_targets(["x"]) == ["*.weight"]
    assert "embed.*" in repr(sel)


# ------------------------------------------------------------------ recipes
def test_stages_from_dict_list_and_files(tmp_path):
    one = {"method": "magnitude", "targets": "*.weight", "ignore": ["embed.*"], "sparsity": 0.5}
    (s,) = recipe.stages(one)
    assert (s.method, s.targets, s.ignore, s.options, s.family) == (
        "magnitude", ("*.weight",), ("embed.*",), {"sparsity": 0.5}, "prune")
    assert s.as_dict() == {"method": "magnitude", "targets": ["*.weight"],
                           "ignore": ["embed.*"], "sparsity": 0.5}
    two = [one, {"method": "rtn", "bits": 4, "group_size": 128}]
    p = tmp_path / "r.json"
    p.write_text(json.dumps(two))
    assert [x.as_dict() for x in recipe.stages(str(p))] == \
        [x.as_dict() for x in recipe.stages(two)]
    p.write_text(json.dumps({"stages": two}))
    assert [x.method for x in recipe.stages(p)] == ["magnitude", "rtn"]
    yaml = pytest.importorskip("yaml")
    y = tmp_path / "r.yaml"
    y.write_text(yaml.safe_dump(two))
    assert [x.as_dict() for x in recipe.stages(y)] == [x.as_dict() for x in recipe.stages(two)]


@pytest.mark.parametrize("bad, msg", [
    ({"sparsity": 0.5}, r"recipe\[0\]: a stage needs a 'method'"),
    ({"method": "prune"}, "unknown method 'prune'; known: magnitude"),
    ({"method": "rtn", "bits": 4, "sparsity": 0.5}, "unknown key 'sparsity' for method 'rtn'"),
    ([{"method": "rtn"}, "x"], r"recipe\[1\]: expected a stage dict"),
    ([], "non-empty list"),
    ({"method": "rtn", "targets": ["re:["]}, r"recipe\[0\]\.targets: 're:\[' is not a valid"),
])
def test_bad_recipes(bad, msg):
    with pytest.raises(ArgumentError, match=msg):
        recipe.stages(bad)


def test_bad_recipe_files(tmp_path):
    p = tmp_path / "r.json"
    p.write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        recipe.stages(p)
    with pytest.raises(ArgumentError, match="cannot read"):
        recipe.stages(str(tmp_path / "missing.json"))


def test_family_check():
    with pytest.raises(ArgumentError, match="'rtn' is a quant method, not prune"):
        recipe.stages({"method": "rtn"}, family="prune")
    assert recipe.methods_of("prune") == ["magnitude", "random", "sparsegpt", "wanda"]


# ------------------------------------------------------------------ prune_state_dict
@pytest.fixture
def sd():
    return litecomp.examples.tiny_decoder_lm(seed=3)


def test_prune_state_dict_granularities_equal_the_mask_functions(sd):
    w = sd["fc.weight"]
    cases = [({"sparsity": 0.3}, prune.l1_unstructured(w, 0.3)),
             ({"amount": 7}, prune.l1_unstructured(w, 7)),
             ({"sparsity": 0.3, "granularity": "row"}, prune.per_row(w, 0.3)),
             ({"sparsity": 0.25, "granularity": "channel", "axis": 1, "norm": 1},
              prune.ln_structured(w, 0.25, 1, 1)),
             ({"sparsity": 0.5, "granularity": "block", "block_shape": [2, 8]},
              prune.block(w, 0.5, (2, 8))),
             ({"n": 1, "m": 4}, prune.nm(w, 1, 4))]
    for keys, want in cases:
        out, masks = prune.prune_state_dict(sd, {"method": "magnitude",
                                                 "targets": "fc.weight", **keys})
        np.testing.assert_array_equal(masks["fc.weight"], want, err_msg=str(keys))
        np.testing.assert_array_equal(out["fc.weight"], prune.apply(w, want))
        assert list(masks) == ["fc.weight"]
        assert all(out[k] is sd[k] for k in sd if k != "fc.weight")


def test_prune_state_dict_sparsity_is_a_fraction_even_when_an_int(sd):
    out, masks = prune.prune_state_dict(sd, {"method": "magnitude", "targets": "fc.weight",
                                             "sparsity": 1})
    assert not masks["fc.weight"].any()  # sparsity 1 = everything, not "one entry"
    with pytest.raises(ArgumentError, match=r"recipe\[0\]\.sparsity: expected a fraction"):
        prune.prune_state_dict(sd, {"method": "magnitude", "sparsity": 1.5})
    with pytest.raises(ArgumentError, match="sparsity or amount, not both"):
        prune.prune_state_dict(sd, {"method": "magnitude", "sparsity": 0.5, "amount": 3})
    with pytest.raises(ArgumentError, match="needs sparsity"):
        prune.prune_state_dict(sd, {"method": "magnitude"})


def test_prune_state_dict_global_default_targets_and_min_ndim(sd):
    out, masks = prune.prune_state_dict(sd, {"method": "magnitude", "sparsity": 0.5,
                                             "granularity": "global", "ignore": ["embed.*"]})
    names = [k for k in sd if sd[k].ndim >= 2 and not k.startswith("embed.")]
    assert list(masks) == names
    want = prune.global_unstructured({k: sd[k] for k in names}, 0.5)
    for k in names:
        np.testing.assert_array_equal(masks[k], want[k])
    # a 1-D tensor is never pruned, even when named
    with pytest.raises(ArgumentError, match="match none of the 14 float tensors with 2"):
        prune.prune_state_dict(sd, {"method": "magnitude", "sparsity": 0.5,
                                    "targets": "fc.bias"})


def test_prune_state_dict_stages_compose_and_input_unchanged(sd):
    before = {k: v.copy() for k, v in sd.items()}
    plan = [{"method": "magnitude", "targets": "fc.weight", "sparsity": 0.5},
            {"method": "random", "targets": "fc.weight", "sparsity": 0.75, "seed": 4}]
    out, masks = prune.prune_state_dict(sd, plan)
    first = prune.l1_unstructured(sd["fc.weight"], 0.5)
    second = prune.random_unstructured(prune.apply(sd["fc.weight"], first), 0.75, seed=4)
    np.testing.assert_array_equal(masks["fc.weight"], first & second)
    np.testing.assert_array_equal(out["fc.weight"], prune.apply(sd["fc.weight"],
                                                                first & second))
    for k in sd:
        np.testing.assert_array_equal(sd[k], before[k])


def test_prune_state_dict_bad_stage_values(sd):
    with pytest.raises(ArgumentError, match="granularity: 'row' is not one of tensor"):
        prune.prune_state_dict(sd, {"method": "random", "sparsity": 0.5, "granularity": "row"})
    with pytest.raises(ArgumentError, match="n/m"):
        prune.prune_state_dict(sd, {"method": "magnitude", "n": 2, "m": 4, "sparsity": 0.5})
    with pytest.raises(ArgumentError, match="'rtn' is a quant method"):
        prune.prune_state_dict(sd, [{"method": "rtn", "bits": 4}])
    with pytest.raises((ArgumentError, ShapeError)):
        prune.prune_state_dict({"w": np.ones((3, 6), np.float32)},
                               {"method": "magnitude", "n": 2, "m": 4})


# ------------------------------------------------------------------ quantize_state_dict
def test_quantize_state_dict_stages_first_stage_wins(sd):
    plan = [{"method": "rtn", "targets": "fc.weight", "bits": 4, "group_size": 32},
            {"method": "rtn", "bits": 8, "axis": 0, "ignore": ["embed.*"]}]
    out, report = Q.quantize_state_dict(sd, plan)
    got = {e.name: e.bits for e in report}
    assert got["fc.weight"] == 4 and "embed.weight" not in got
    assert set(got) == {k for k in sd if sd[k].ndim >= 2 and k != "embed.weight"}
    q = Q.load_quantized(out, "fc.weight")
    ref = Q.quantize(sd["fc.weight"], 4, group_size=32)
    assert q.data.tobytes() == ref.data.tobytes() and q.group_size == 32
    assert out["embed.weight"] is sd["embed.weight"]
    assert out["fc.bias"] is sd["fc.bias"]


def test_quantize_state_dict_older_pattern_form_means_the_same(sd):
    old, r_old = Q.quantize_state_dict(sd, {"embed.*": "skip", "fc.weight": 4,
                                            "*weight": {"bits": 8, "axis": 0},
                                            "nothing*": 8})
    new, r_new = Q.quantize_state_dict(sd, [
        {"method": "rtn", "targets": "fc.weight", "ignore": ["embed.*"], "bits": 4},
        {"method": "rtn", "targets": "*weight", "ignore": ["embed.*"], "bits": 8, "axis": 0}])
    assert list(old) == list(new)
    for k in old:
        assert np.asarray(old[k]).tobytes() == np.asarray(new[k]).tobytes(), k
    assert [(e.name, e.bits) for e in r_old] == [(e.name, e.bits) for e in r_new]


def test_quantize_state_dict_other_methods_and_errors(sd):
    out, report = Q.quantize_state_dict(sd, [{"method": "nf4", "targets": "fc.weight"},
                                             {"method": "kmeans", "targets": "embed.weight",
                                              "bits": 3}])
    assert isinstance(Q.load_quantized(out, "fc.weight"), Q.Quant4)
    assert isinstance(Q.load_quantized(out, "embed.weight"), Q.CodebookTensor)
    with pytest.raises(ArgumentError, match="match none"):
        Q.quantize_state_dict(sd, {"method": "rtn", "targets": "attn.*"})
    with pytest.raises(ArgumentError, match="'magnitude' is a prune method, not quant"):
        Q.quantize_state_dict(sd, {"method": "magnitude", "sparsity": 0.5})
    with pytest.raises(ArgumentError, match="format: 'gptq'"):
        Q.quantize_state_dict(sd, {"*": {"format": "gptq"}})


def test_sensitivity_targets_and_older_layers(sd):
    def metric(d):
        return float(sum(np.abs(v).sum() for v in d.values()))
    t = prune.sensitivity(sd, metric, targets="re:.*linear[12]\\.weight", ignore="*.1.*",
                          sparsities=(0.5,), progress=False)
    assert t.layers == ["transformer_decoder.layers.0.linear1.weight",
                        "transformer_decoder.layers.0.linear2.weight"]
    old = prune.sensitivity(sd, metric, layers=t.layers, sparsities=(0.5,), progress=False)
    np.testing.assert_array_equal(old.values, t.values)
    w = sd["transformer_decoder.layers.0.linear1.weight"]
    lost = np.abs(w).sum() - np.abs(prune.apply(w, prune.l1_unstructured(w, 0.5))).sum()
    # float32 sums in a different order: measured 6e-8 relative
    assert t.values[0, 0] == pytest.approx(t.baseline - lost, rel=1e-6)
