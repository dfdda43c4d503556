import math

import pytest

from pruning_tools.config import make_config, resolve_prune_dict

SHAPES = {"conv.weight": (8, 3, 3, 3), "conv.bias": (8,), "fc.weight": (10, 72), "fc.bias": (10,)}
DEFAULTS = {"balance": "fix", "bank_size": 64, "layout": "channels_last"}


def config(**overrides):
    args = dict(
        pretrain_step=0,
        sparse_step=0,
        frequency=100,
        prune_dict={"*.weight": 0.9},
        restore_sparsity=False,
        fix_sparsity=False,
        balance="fix",
        prune_device="default",
        bank_size=64,
        layout="channels_last",
        shapes=SHAPES,
    )
    args.update(overrides)
    return make_config(**args)


def test_globs_exact_names_and_order():
    specs = resolve_prune_dict({"*": 0.5, "*.weight": 0.8, "fc.weight": 0.9}, SHAPES, DEFAULTS)
    assert list(specs) == list(SHAPES)  # model order
    assert specs["conv.weight"].sparsity == 0.8 and specs["fc.weight"].sparsity == 0.9
    assert specs["conv.bias"].sparsity == 0.5
    # an exact name wins even when a later glob matches it
    specs = resolve_prune_dict({"fc.weight": 0.3, "*.weight": 0.8}, SHAPES, DEFAULTS)
    assert specs["fc.weight"].sparsity == 0.3


def test_one_dim_fix_falls_back_to_unstructured_and_overrides():
    specs = resolve_prune_dict(
        {"conv.bias": 0.5, "fc.weight": {"sparsity": 0.5, "bank_size": 4, "layout": "flat"}}, SHAPES, DEFAULTS
    )
    assert specs["conv.bias"].balance == "none"
    assert (specs["fc.weight"].bank_size, specs["fc.weight"].layout, specs["fc.weight"].balance) == (4, "flat", "fix")


def test_callers_dict_not_mutated():
    d = {"*.weight": 0.9, "fc.bias": {"sparsity": 0.5}}
    snapshot = {"*.weight": 0.9, "fc.bias": {"sparsity": 0.5}}
    config(prune_dict=d)
    assert d == snapshot


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"prune_dict": {"*.weight": 1.0}}, ["prune_dict['*.weight']", "1.0", "[0, 1)"]),
        ({"prune_dict": {"*.weight": -0.1}}, ["-0.1", "[0, 1)"]),
        ({"prune_dict": {"*.weight": math.nan}}, ["nan", "[0, 1)"]),
        ({"prune_dict": {"*.weight": "0.9"}}, ["'0.9'", "number"]),
        ({"prune_dict": {"*.weight": True}}, ["True", "number"]),
        ({"prune_dict": {}}, ["prune_dict", "non-empty"]),
        ({"prune_dict": None}, ["prune_dict=None"]),
        ({"prune_dict": [("fc.weight", 0.9)]}, ["prune_dict", "dict"]),
        ({"prune_dict": {"fc.wieght": 0.9}}, ["'fc.wieght'", "fc.weight"]),
        ({"prune_dict": {"fc.weight": {"sparsity": 0.9, "bank": 4}}}, ["bank", "sparsity"]),
        ({"prune_dict": {"fc.weight": {"balance": "fix"}}}, ["'sparsity'"]),
        ({"prune_dict": {"fc.weight": {"sparsity": 0.5, "bank_size": 1}}}, ["bank_size", "1", ">= 2"]),
        ({"pretrain_step": -1}, ["pretrain_step", "-1", "integer >= 0"]),
        ({"sparse_step": 2.5}, ["sparse_step", "2.5", "integer"]),
        ({"frequency": 46.8}, ["frequency", "46.8", "integral"]),
        ({"frequency": float("nan")}, ["frequency", "nan", "integer"]),
        ({"frequency": 0}, ["frequency", "0", ">= 1"]),
        ({"balance": "bank"}, ["balance", "'bank'", "'fix'", "'none'"]),
        ({"layout": "nhwc"}, ["layout", "'nhwc'", "'channels_last'"]),
        ({"prune_device": "cuda"}, ["prune_device", "'cuda'", "'cpu'"]),
        ({"bank_size": 1}, ["bank_size", "1", ">= 2"]),
        ({"restore_sparsity": "yes"}, ["restore_sparsity", "'yes'", "True or False"]),
    ],
)
def test_bad_input_names_argument_value_and_allowed(overrides, words):
    with pytest.raises(ValueError) as err:
        config(**overrides)
    for word in words:
        assert word in str(err.value)


def test_to_dict_is_plain_data():
    d = config(dtypes={name: "float32" for name in SHAPES}).to_dict()
    assert d["params"]["fc.weight"] == {
        "sparsity": 0.9,
        "balance": "fix",
        "bank_size": 64,
        "layout": "channels_last",
        "out_dim": 0,
        "shape": [10, 72],
        "dtype": "float32",
    }
    assert config().to_dict()["params"]["fc.weight"]["dtype"] == ""  # not recorded


def test_integral_float_steps_are_the_integers():  # the original tool computes frequency = steps / n
    c = config(pretrain_step=10.0, sparse_step=200.0, frequency=47.0)
    assert (c.pretrain_step, c.sparse_step, c.frequency) == (10, 200, 47)
    assert all(type(v) is int for v in (c.pretrain_step, c.sparse_step, c.frequency))


def test_aliases_and_layouts_from_the_adapter():
    shapes = {"pos": (1, 5, 64), "fc.weight": (10, 72), "fc.bias": (10,)}
    aliases = {"_orig_mod.fc.weight": "fc.weight", "head.weight": "fc.weight"}
    specs = resolve_prune_dict(
        {"head.weight": 0.5, "_orig_mod.*": 0.75, "pos": 0.5},
        shapes,
        DEFAULTS,
        layouts={"pos": "last_dim"},
        aliases=aliases,
    )
    assert list(specs) == ["pos", "fc.weight"]  # model order, one entry per parameter
    assert specs["fc.weight"].sparsity == 0.5  # an exact name (an alias is one) beats a glob
    assert specs["pos"].layout == "last_dim" and specs["fc.weight"].layout == "channels_last"
    explicit = resolve_prune_dict(
        {"pos": {"sparsity": 0.5, "layout": "flat"}}, shapes, DEFAULTS, layouts={"pos": "last_dim"}
    )
    assert explicit["pos"].layout == "flat"
