"""Prune the original example's CNN on MNIST with MXNet (Gluon), bank-balanced at 90 %.

    OMP_NUM_THREADS=2 python examples/mxnet_pruning_mnist.py                 # the full recipe
    OMP_NUM_THREADS=2 python examples/mxnet_pruning_mnist.py --limit 2000    # a quick look

A plain Gluon training loop; the pruning is four additions, marked (1) to (4): build ``Prune``
with the schedule (dense warm-up 2 epochs, cubic ramp 3 epochs, fine-tuning at fixed sparsity
3 epochs), call ``prune.prepare()`` after ``backward()`` (the layers learn their input sizes at
the first forward pass), ``prune.prune()`` after every ``trainer.step()``, and read
``prune.sparsity()``. ``pruning-tools demo --framework mxnet`` trains the same network with the
same recipe and writes weights, plots and a results file (``pruning_tools/demo/``).
"""

import argparse

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from pruning_tools.demo.data import load_mnist
from pruning_tools.demo.mxnet_backend import SimpleCNN, normalise, one_cycle_lr, random_shift
from pruning_tools.mxnet_pruning import Prune

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--sparsity", type=float, default=0.9)
parser.add_argument("--balance", default="fix", choices=["fix", "none"])
parser.add_argument("--epochs", type=int, default=8)
parser.add_argument("--data", default="data/mnist", help="directory of the MNIST IDX files")
parser.add_argument("--limit", type=int, default=None, help="use only the first N train and test images")
args = parser.parse_args()

mx.random.seed(0)
rng = np.random.default_rng(0)
data = load_mnist(args.data).head(args.limit)  # uint8 [N, 28, 28] images, uint8 [N] labels
train_x, train_y = normalise(data.train_images), data.train_labels.astype(np.int64)  # float32 [N, 1, 28, 28]
test_x, test_y = normalise(data.test_images), data.test_labels.astype(np.int64)

net = SimpleCNN()  # 3 x (conv 3x3 stride 2, BN, ReLU), dense 1024 -> 10 logits
net.initialize(mx.init.Xavier(magnitude=2.0))  # deferred: input sizes known after the first batch
net.hybridize()
batch_size = 128
steps_per_epoch = -(-len(train_x) // batch_size)
total_steps = steps_per_epoch * args.epochs
trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 4e-3, "wd": 5e-5})
loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()  # logits in, no softmax

# (1) every conv and dense weight to the target; masks refreshed 8 times per epoch during the ramp
prune_dict = {name: args.sparsity for name, p in net.collect_params().items() if len(p.shape) > 1}
prune = Prune(
    net,
    pretrain_step=total_steps // 4,
    sparse_step=total_steps * 3 // 8,
    frequency=max(1, steps_per_epoch // 8),
    prune_dict=prune_dict,
    balance=args.balance,
)

step = 0
for epoch in range(1, args.epochs + 1):
    order = rng.permutation(len(train_x))
    for start in range(0, len(train_x), batch_size):
        batch = order[start : start + batch_size]
        x = mx.nd.array(random_shift(train_x[batch], 2, rng))  # random shifts of up to 2 pixels
        with autograd.record():
            loss = loss_fn(net(x), mx.nd.array(train_y[batch]))
        loss.backward()
        prune.prepare()  # (2) after the first forward pass takes the initial state; then a no-op
        step += 1
        trainer.set_learning_rate(one_cycle_lr(step, total_steps, 4e-3))
        trainer.step(len(batch))
        prune.prune()  # (3) after every trainer step

    correct = sum(
        int((net(mx.nd.array(x)).argmax(axis=1).asnumpy() == y).sum())  # BN uses running stats
        for x, y in zip(np.array_split(test_x, 10), np.array_split(test_y, 10))
    )
    layer_sparse_rate, total_sparse_rate = prune.sparsity()  # (4) zeros counted in the weights
    print(
        f"epoch {epoch}: test accuracy {correct / len(test_x):.4f}, loss {float(loss.mean().asscalar()):.4f}, "
        f"sparsity {total_sparse_rate:.4f} (target {args.sparsity})"
    )

print({name: round(rate, 4) for name, rate in layer_sparse_rate.items()})
print("every bank within its budget:", prune.check()[1])
