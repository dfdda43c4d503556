"""MXNet-only behaviour: deferred initialisation, several contexts, hybridized training, files,
errors, and the MNIST trainer. Mask equality with PyTorch is in test_parity.py."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

mx = pytest.importorskip("mxnet")
pytestmark = pytest.mark.mxnet
from mxnet import autograd, gluon  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

from pruning_tools.mxnet_pruning import Prune  # noqa: E402

CONTEXTS = [mx.cpu(0), mx.cpu(1)]


def make_net(in_channels: int = 0) -> nn.HybridSequential:
    """conv 8->32 (deferred unless ``in_channels``), dense 32*4*4 -> 10; names ``net_conv0_weight``, ..."""
    net = nn.HybridSequential(prefix="net_")
    with net.name_scope():
        net.add(nn.Conv2D(32, 3, strides=2, in_channels=in_channels), nn.Activation("relu"), nn.Dense(10))
    return net


def batches(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield mx.nd.array(rng.standard_normal((8, 8, 9, 9))), mx.nd.array(rng.integers(0, 10, 8))


def train(net, prune, trainer, data, ctx=None):
    ctx = ctx or (mx.cpu(),)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for x, y in data:
        xs, ys = gluon.utils.split_and_load(x, ctx), gluon.utils.split_and_load(y, ctx)
        with autograd.record():
            losses = [loss_fn(net(a), b) for a, b in zip(xs, ys)]
        autograd.backward(losses)
        prune.prepare()
        trainer.step(x.shape[0])
        prune.prune()


def quiet(*args, **kwargs) -> Prune:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Prune(*args, **kwargs)


def test_import_without_mxnet_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "mxnet", None)  # "import mxnet" now raises ImportError
    monkeypatch.delitem(sys.modules, "pruning_tools.mxnet_pruning")
    with pytest.raises(ImportError, match=r'pip install "bank-pruning-tools\[mxnet\]"'):
        importlib.import_module("pruning_tools.mxnet_pruning")


def test_deferred_initialisation_prepare_and_prune_errors():
    net = make_net()
    net.initialize()
    prune = Prune(net, 0, 4, 2, {"*weight": 0.75}, bank_size=8)
    with pytest.raises(RuntimeError, match=r"prepare\(\).*net_conv0_weight.*net_dense0_weight"):
        prune.prepare()
    with pytest.raises(RuntimeError, match=r"prepare\(\) has not succeeded.*net_conv0_weight"):
        prune.prune()
    with pytest.raises(RuntimeError, match="prepare"):
        prune.sparsity()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    train(net, prune, trainer, batches(3))  # prepare() every iteration: takes the state once
    assert prune.step == 3
    masks = prune.masks()
    assert prune.prepare() is prune and prune.step == 3  # idempotent: state kept
    assert all(np.array_equal(masks[n].numpy(), m.numpy()) for n, m in prune.masks().items())
    train(net, prune, trainer, batches(2, seed=1))
    layers, _ = prune.sparsity()
    assert layers["net_conv0_weight"] == 0.75 and prune.check()[1]


def test_prepare_before_initialize_names_the_parameters():
    net = make_net(in_channels=8)  # shapes known, but initialize() never called
    prune = Prune(net, 0, 0, 1, {"net_conv0_weight": 0.5})
    with pytest.raises(RuntimeError, match="net_conv0_weight"):
        prune.prepare()


def test_masks_every_context_and_copies_stay_equal():
    net = make_net(in_channels=8)
    net.initialize(ctx=CONTEXTS)
    net(mx.nd.zeros((1, 8, 9, 9), ctx=CONTEXTS[0]))  # infer the dense layer's shape
    prune = quiet(net, 0, 0, 1, {"*weight": 0.9}, bank_size=16)
    weight = net.collect_params()["net_dense0_weight"]
    weight.data(CONTEXTS[1])[:] = 1.0  # a stale copy on the second context: must be masked too
    prune.prepare().prune()
    keep = prune.masks()["net_dense0_weight"].numpy()
    for ctx in CONTEXTS:
        assert not (weight.data(ctx).asnumpy()[~keep] != 0).any(), ctx
    assert (weight.data(CONTEXTS[1]).asnumpy()[keep] == 1.0).all()

    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    train(net, prune, trainer, batches(3), ctx=CONTEXTS)  # momentum cannot revive pruned weights
    for name, keep in prune.masks().items():
        copies = [p.asnumpy() for p in net.collect_params()[name].list_data()]
        assert np.array_equal(copies[0], copies[1]), name
        assert not (copies[0][~keep.numpy()] != 0).any(), name


def test_hybridized_training_reaches_the_budget():
    net = make_net()
    net.initialize()
    net.hybridize()
    prune = quiet(net, 2, 6, 2, {"*weight": 0.875}, bank_size=8)
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.01})
    train(net, prune, trainer, batches(10))
    layers, total = prune.sparsity()
    assert layers == {"net_conv0_weight": 0.875, "net_dense0_weight": 0.875}
    assert total == 0.875 and prune.check() == ({"net_conv0_weight": True, "net_dense0_weight": True}, True)


def test_save_and_load_resume_bit_identically(tmp_path):
    def fresh():
        net = make_net(in_channels=8)
        net.initialize(mx.init.Xavier())
        net(mx.nd.zeros((1, 8, 9, 9)))
        return net

    mx.random.seed(0)
    net = fresh()
    prune = quiet(net, 1, 8, 2, {"*weight": 0.9, "net_dense0_bias": 0.5}, bank_size=16)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.05, "momentum": 0.9})
    train(net, prune, trainer, batches(4))
    net.save_parameters(str(tmp_path / "net.params"))
    trainer.save_states(str(tmp_path / "trainer.states"))
    prune.save(tmp_path / "pruner.safetensors")
    train(net, prune, trainer, batches(6, seed=1))  # the uninterrupted run

    resumed_net = fresh()
    resumed_net.load_parameters(str(tmp_path / "net.params"))
    resumed = quiet(resumed_net, 1, 8, 2, {"*weight": 0.9, "net_dense0_bias": 0.5}, bank_size=16)
    resumed.load(tmp_path / "pruner.safetensors")
    assert resumed.step == 4
    resumed_trainer = gluon.Trainer(resumed_net.collect_params(), "sgd", {"learning_rate": 0.05, "momentum": 0.9})
    resumed_trainer.load_states(str(tmp_path / "trainer.states"))
    train(resumed_net, resumed, resumed_trainer, batches(6, seed=1))

    for (name, p), q in zip(net.collect_params().items(), resumed_net.collect_params().values()):
        assert np.array_equal(p.data().asnumpy(), q.data().asnumpy()), name
    for name, mask in prune.masks().items():
        assert torch.equal(resumed.masks()[name], mask), name
    assert resumed.state_dict()["mask_targets"] == prune.state_dict()["mask_targets"]

    other = quiet(fresh(), 1, 8, 2, {"*weight": 0.8}, bank_size=16)
    with pytest.raises(ValueError, match="different settings: .*params"):
        other.load(tmp_path / "pruner.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a state")
    with pytest.raises(ValueError, match="bad.safetensors is not a pruner state file"):
        other.load(tmp_path / "bad.safetensors")


def test_state_dict_is_plain_data():
    net = make_net(in_channels=8)
    net.initialize()
    net(mx.nd.zeros((1, 8, 9, 9)))
    prune = quiet(net, 0, 0, 1, {"*weight": 0.5}, bank_size=4)
    prune.prune()
    state = prune.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype == np.uint8 for v in state["masks"].values())
    assert state["step"] == 1 and state["config"]["params"]["net_conv0_weight"]["bank_size"] == 4


def test_restore_sparsity_starts_from_existing_zeros():
    net = make_net(in_channels=8)
    net.initialize()
    net(mx.nd.zeros((1, 8, 9, 9)))
    weight = net.collect_params()["net_dense0_weight"]
    w = weight.data().asnumpy()
    w[:, ::2] = 0.0  # half the weights already pruned
    weight.set_data(mx.nd.array(w))
    prune = quiet(net, 0, 4, 1, {"net_dense0_weight": 0.75}, restore_sparsity=True, balance="none")
    assert prune.target("net_dense0_weight", 0) == 0.5
    prune.prune()
    assert not (weight.data().asnumpy()[:, ::2] != 0).any()


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="net=dict.*gluon.Block"):
        Prune({}, 0, 0, 1, {"w": 0.5})
    net = make_net(in_channels=8)
    with pytest.raises(ValueError, match="'net_conv0_wieght'.*closest names.*net_conv0_weight"):
        Prune(net, 0, 0, 1, {"net_conv0_wieght": 0.5})
    with pytest.raises(ValueError, match="balance='fixed'"):
        Prune(net, 0, 0, 1, {"*weight": 0.5}, balance="fixed")
    with pytest.raises(ValueError, match="prune_dict=None"):
        Prune(net)

    class Counter(gluon.HybridBlock):
        def __init__(self):
            super().__init__(prefix="counter_")
            self.steps = self.params.get("steps", shape=(3,), dtype="int32")

        def hybrid_forward(self, F, x, steps):
            return x

    with pytest.raises(TypeError, match="'counter_steps'.*int32.*floating-point"):
        Prune(Counter(), 0, 0, 1, {"counter_steps": 0.5})
    nhwc = nn.Conv2D(8, 3, layout="NHWC", in_channels=4, prefix="nhwc_")
    with pytest.raises(ValueError, match="nhwc_weight: conv layout='NHWC'"):
        Prune(nhwc, 0, 0, 1, {"nhwc_weight": 0.5})


def test_cast_after_pruning_keeps_masking():
    net = make_net(in_channels=8)
    net.initialize()
    net(mx.nd.zeros((1, 8, 9, 9)))
    prune = quiet(net, 0, 0, 1, {"*weight": 0.75}, bank_size=8)
    prune.prune()
    net.cast("float16")
    weight = net.collect_params()["net_dense0_weight"]
    weight.set_data(mx.nd.ones(weight.shape, dtype="float16"))
    prune.prune()
    assert weight.data().dtype == np.float16 and prune.sparsity()[0]["net_dense0_weight"] == 0.75


def test_import_keeps_torchs_thread_count():
    code = (
        "import torch; torch.set_num_threads(2); from pruning_tools import mxnet_pruning; "
        "print(torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "2"


def test_global_refresh_reads_each_weight_once():
    """Sizes come from the per-parameter specs: a refresh copies every weight to the host once, not once
    per global parameter."""
    net = nn.HybridSequential(prefix="many_")
    with net.name_scope():
        for _ in range(6):
            net.add(nn.Dense(16, in_units=16))
    net.initialize()
    prune = quiet(net, 0, 0, 1, {"*weight": 0.75}, balance="global")
    reads = []
    read = prune._bridge.read
    prune._bridge.read = lambda name: reads.append(name) or read(name)
    prune.prune()  # the one-shot refresh, then the masks are applied
    assert sorted(reads) == sorted(prune.config.params)
    assert prune.sparsity()[1] == 0.75


def test_an_unlisted_channels_last_conv_is_no_reason_to_refuse_the_network():
    net = nn.HybridSequential(prefix="nhwc_")
    with net.name_scope():
        net.add(nn.Conv2D(8, 3, layout="NHWC", in_channels=4), nn.Dense(10, in_units=8))
    net.initialize()
    assert quiet(net, 0, 0, 1, {"*dense0_weight": 0.5}).config.params
    with pytest.raises(ValueError, match="layout='NHWC' is not supported"):
        quiet(net, 0, 0, 1, {"*conv0_weight": 0.5})


def test_batchnorm_statistics_are_not_parameters_as_in_pytorch():
    """Aux states (running mean / variance) were accepted and pruned; PyTorch refuses its buffers."""
    net = nn.HybridSequential(prefix="n_")
    with net.name_scope():
        net.add(nn.Dense(8, in_units=8), nn.BatchNorm(in_channels=8))
    net.initialize()
    with pytest.raises(ValueError, match=r"'n_batchnorm0_running_var' names an auxiliary state .* not a parameter"):
        Prune(net, 0, 0, 1, {"n_batchnorm0_running_var": 0.5}, balance="none")
    prune = Prune(net, 0, 0, 1, {"n_batchnorm0_*": 0.5}, balance="none")  # gamma and beta only
    assert list(prune.config.params) == ["n_batchnorm0_gamma", "n_batchnorm0_beta"]
    prune.prune()
    stats = net.collect_params()["n_batchnorm0_running_var"].data().asnumpy()
    assert (stats == 1).all()  # untouched


def test_the_block_may_be_passed_as_model():  # the keyword of the original tool's MXNet documentation
    net = make_net(in_channels=8)
    net.initialize()
    net(mx.nd.ones((1, 8, 9, 9)))  # the dense layer's input size is inferred here
    prune = Prune(model=net, pretrain_step=0, sparse_step=0, frequency=47.0, prune_dict={"*dense0_weight": 0.5})
    assert prune.config.frequency == 47
    prune.prune()
    assert prune.sparsity()[0]["net_dense0_weight"] == 0.5
    with pytest.raises(TypeError, match="both net= and model="):
        Prune(net, model=net, prune_dict={"*dense0_weight": 0.5})
    with pytest.raises(TypeError, match="neither"):
        Prune(prune_dict={"*dense0_weight": 0.5})
    with pytest.raises(ValueError, match="frequency=46.8"):
        Prune(net, 0, 0, 46.8, {"*dense0_weight": 0.5})


def test_depthwise_conv_warns_at_two_four():
    net = nn.HybridSequential(prefix="mb_")
    with net.name_scope():
        net.add(nn.Conv2D(16, 3, groups=16, in_channels=16), nn.Conv2D(32, 1, in_channels=11))
    net.initialize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Prune(net, 0, 0, 1, {"mb_conv0_weight": 0.5}, bank_size=4)
        Prune(net, 0, 0, 1, {"mb_conv1_weight": 0.9})  # rows of 11 keep 1 (0.9091): an overshoot, no warning
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "mb_conv0_weight" in messages[0] and "rows of 1" in messages[0]


def test_nd_parameter_outside_a_conv_is_rows_along_its_last_dim():
    class Embedding(gluon.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.pos = self.params.get("pos", shape=(1, 5, 64))

        def hybrid_forward(self, F, x, pos):
            return F.broadcast_add(x, pos)

    block = Embedding(prefix="vit_")
    block.initialize()
    prune = Prune(block, 0, 0, 1, {"vit_pos": 0.5}, bank_size=4)
    prune.prune()
    assert prune.config.params["vit_pos"].layout == "last_dim"
    assert (block.pos.data().asnumpy() != 0).reshape(5, 16, 4).sum(axis=-1).tolist() == [[2] * 16] * 5
