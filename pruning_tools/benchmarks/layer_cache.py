"""What the converted layers' descriptor check costs per call, on a small layer, from one run.

The eager path of a converted layer reuses the kernel descriptor it checked while what the kernel
reads of its buffers is unchanged (``inference.ops.signature``: addresses, sizes, strides, dtypes,
devices, versions). Three ways to call the same kernel run interleaved, each task a loop of calls:

- ``kernel``: ``native.linear`` on the descriptor, no check and no module at all (the floor);
- ``identity``: ``BankSparseLinear.forward`` with the earlier rule in place of ``_fast_path``: buffers
  compared by object and the indices' versions (unsafe: a storage swapped under a buffer went unseen);
- ``module``: ``BankSparseLinear.forward`` as shipped (the signature compared).

Prints microseconds per call and the ratios; ``module / identity`` is the cost the signature adds.

    python -m pruning_tools.benchmarks.layer_cache  # 64x256, batch 1
    python -m pruning_tools.benchmarks.layer_cache --shape 768x768 --batch 8
"""

from __future__ import annotations

import copy
import os

import click
import torch

from pruning_tools import _native
from pruning_tools.benchmarks.harness import header, interleaved, paired_ratio
from pruning_tools.inference import BankSparseLinear, native
from pruning_tools.masks import bank_mask

PARTS = ("values", "indices", "tail_values", "tail_indices", "bias")


@click.command()
@click.option("--shape", default="64x256", show_default=True, help="OUTxIN of the Linear layer.")
@click.option("--batch", default=1, show_default=True)
@click.option("--calls", default=2000, show_default=True, help="Calls per task per round.")
@click.option("--rounds", default=15, show_default=True)
def main(shape: str, batch: int, calls: int, rounds: int) -> None:
    torch.set_num_threads(1)
    out_f, in_f = (int(n) for n in shape.split("x"))
    torch.manual_seed(0)
    fc = torch.nn.Linear(in_f, out_f)
    with torch.no_grad():
        fc.weight.mul_(bank_mask(fc.weight, None, 0.75))
    m = BankSparseLinear.from_linear(fc)
    x = torch.randn(batch, in_f)
    with _native.use_engine("native"), torch.no_grad():
        m(x)
        fast = m._fast
        if fast is None:
            raise click.ClickException("the bank-sparse kernel is not available here (no C compiler?)")
        described = fast.entry.described
        if described is None:
            raise click.ClickException("the layer has no kernel descriptor: nothing to measure")
        seen = tuple(m._buffers[p] for p in PARTS)
        versions = (m.indices._version, m.tail_indices._version)
        old = copy.deepcopy(m)
        old._fast = fast

        def earlier_rule():  # the check this one replaced, for the ratio only
            b = old._buffers
            if (
                b["values"] is seen[0] and b["indices"] is seen[1] and b["tail_values"] is seen[2]
                and b["tail_indices"] is seen[3] and b["bias"] is seen[4]
                and (m.indices._version, m.tail_indices._version) == versions
            ):  # fmt: skip
                return fast
            raise AssertionError("the buffers changed during the benchmark")

        old._fast_path = earlier_rule  # type: ignore[method-assign]  # the earlier rule, for the ratio only
        for part in PARTS:  # the deep copy's buffers are other objects: give it the ones the rule compares
            old._buffers[part] = m._buffers[part]

        def kernel() -> None:
            for _ in range(calls):
                native.linear(described, x)

        def identity() -> None:
            for _ in range(calls):
                old(x)

        def module() -> None:
            for _ in range(calls):
                m(x)

        timings = interleaved({"kernel": kernel, "identity": identity, "module": module}, rounds, rotate=True)
    click.echo(header(f"converted-layer check, Linear {shape}, batch {batch}", 1))
    click.echo(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    for name, t in timings.items():
        click.echo(f"{name:9s} {t.median / calls * 1e6:7.2f} us/call (median of {rounds} rounds)")
    click.echo(f"module / kernel   {paired_ratio(timings['module'], timings['kernel']):.2f}x")
    click.echo(f"module / identity {paired_ratio(timings['module'], timings['identity']):.2f}x")
    click.echo(f"identity / kernel {paired_ratio(timings['identity'], timings['kernel']):.2f}x")


if __name__ == "__main__":
    main()
