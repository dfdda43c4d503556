"""The GPU check of ``scripts/gpu_check.py``, in rooms that run (and are tested) on a CPU too.

- ``cases``: what is compared — patterns, dtypes, weight shapes (ResNet-50's and BERT-base's from
  ``benchmarks.models``, and edge shapes: tail banks, short rows, ConvTranspose, flat layout), and
  the weights themselves, generated on the CPU so every device starts from the same bits.
- ``correctness``: masks computed on the device against the CPU engine, bit for bit; ``Prune`` on
  device parameters (``prune_device="default"`` and ``"cpu"``) against a CPU run, step by step,
  with the synchronising CUDA calls of every step counted.
- ``cost``: ratios timed in one interleaved run with ``benchmarks.harness`` (refresh ÷ a memory pass,
  ``prune()`` ÷ ``_foreach_mul_``, a ResNet-50 training step with ÷ without ``prune()``).
- ``sparse``: 2:4 weights through ``torch.sparse.to_sparse_semi_structured`` and the library's
  ``BankSparseLinear`` on the device: equal to the masked dense product, and their speed against it.
- ``report``: the rows every section returns, the table, JSON and Markdown, and the exit code.

On a CPU the sections take CPU tensors standing in for CUDA ones (``--device cpu``): the device side
then runs the pure-PyTorch mask path, the one CUDA tensors take, against the compiled CPU engine.
"""
