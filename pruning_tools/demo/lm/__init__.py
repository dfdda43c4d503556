"""The language-model demo: a small byte-level GPT on the Python documentation, pruned every way.

``data`` reads the vendored corpus (checksummed), ``model`` is the GPT, ``trainer`` the training loop
and the held-out perplexity, ``experiments`` the runs of the tables in docs/results/language-model.md
(dense, one-shot, gradual, one-shot then fine-tune), ``app`` what ``pruning-tools demo --task lm`` runs.
"""
