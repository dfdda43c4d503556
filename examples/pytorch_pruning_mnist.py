"""Prune the original example's CNN on MNIST with PyTorch, bank-balanced at 90 %.

    python examples/pytorch_pruning_mnist.py                 # about 4 CPU-minutes (one thread)
    python examples/pytorch_pruning_mnist.py --limit 2000    # a quick look

A plain training loop; the pruning is three additions, marked (1), (2), (3): build ``Prune``
with the schedule (dense warm-up 2 epochs, cubic ramp 3 epochs, fine-tuning at fixed sparsity
3 epochs), call ``prune.prune()`` after every ``optimizer.step()``, read ``prune.sparsity()``.
``pruning-tools demo`` trains the same network with the same recipe and also writes weights,
plots and a results file (``pruning_tools/demo/``).
"""

import argparse

import torch
import torch.nn.functional as F

from pruning_tools.demo.data import load_mnist
from pruning_tools.demo.torch_backend import SimpleCNN, random_shift, to_tensor
from pruning_tools.pytorch_pruning import Prune

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--sparsity", type=float, default=0.9)
parser.add_argument("--balance", default="fix", choices=["fix", "none"])
parser.add_argument("--epochs", type=int, default=8)
parser.add_argument("--data", default="data/mnist", help="directory of the MNIST IDX files")
parser.add_argument("--limit", type=int, default=None, help="use only the first N train and test images")
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
generator = torch.Generator().manual_seed(0)
data = load_mnist(args.data).head(args.limit)  # uint8 [N, 28, 28] images, uint8 [N] labels
train_x, train_y = (
    to_tensor(data.train_images),
    torch.tensor(data.train_labels, dtype=torch.long),
)  # [N, 1, 28, 28], [N]
test_x, test_y = to_tensor(data.test_images), torch.tensor(data.test_labels, dtype=torch.long)

model = SimpleCNN()  # 3 x (conv 3x3 stride 2, BN, ReLU), dense 1024 -> 10 logits
batch_size = 128
steps_per_epoch = -(-len(train_x) // batch_size)
total_steps = steps_per_epoch * args.epochs
optimizer = torch.optim.Adam(model.parameters(), lr=4e-3, weight_decay=5e-5)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=4e-3, total_steps=total_steps, pct_start=0.15)

# (1) every conv and dense weight to the target; masks refreshed 8 times per epoch during the ramp
prune_dict = {name: args.sparsity for name, p in model.named_parameters() if p.dim() > 1}
prune = Prune(
    model,
    pretrain_step=total_steps // 4,
    sparse_step=total_steps * 3 // 8,
    frequency=max(1, steps_per_epoch // 8),
    prune_dict=prune_dict,
    balance=args.balance,
)

for epoch in range(1, args.epochs + 1):
    model.train()
    for batch in torch.randperm(len(train_x), generator=generator).split(batch_size):
        x = random_shift(train_x[batch], 2, generator)  # random shifts of up to 2 pixels
        loss = F.cross_entropy(model(x), train_y[batch])  # logits in, no softmax
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        prune.prune()  # (2) after every optimizer step

    model.eval()
    with torch.no_grad():
        accuracy = sum(
            int((model(x).argmax(1) == y).sum()) for x, y in zip(test_x.split(1000), test_y.split(1000))
        ) / len(test_x)
    layer_sparse_rate, total_sparse_rate = prune.sparsity()  # (3) zeros counted in the weights
    print(
        f"epoch {epoch}: test accuracy {accuracy:.4f}, loss {loss.item():.4f}, "
        f"sparsity {total_sparse_rate:.4f} (target {args.sparsity})"
    )

print({name: round(rate, 4) for name, rate in layer_sparse_rate.items()})
print("every bank within its budget:", prune.check()[1])
