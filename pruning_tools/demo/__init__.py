"""The MNIST demo: an application of the library, apart from it.

``data`` reads the IDX files, ``recipe`` holds the training recipe, ``trainer.train_mnist`` is the one
training loop for both frameworks (``torch_backend``, ``mxnet_backend``), ``outputs`` writes the files
and ``plots`` / ``sensitivity_plots`` draw the figures (matplotlib, extra ``plots``).
"""
