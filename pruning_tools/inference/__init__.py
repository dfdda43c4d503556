"""Inference from packed bank-sparse weights: modules computing straight from values + indices
(``modules``, ``attention``), registered as torch operators (``ops``: the C kernel through ``native``,
the pure-PyTorch ``reference`` elsewhere), the conversion of a pruned model (``convert``) and its
rule's calibration on this machine (``calibration``; ``calibrate()`` measures again)."""

from .attention import BankSparseMultiheadAttention
from .calibration import calibrate
from .convert import ConversionReport, LayerReport, load_bank_sparse, to_bank_sparse
from .modules import BankSparseConv, BankSparseLinear, is_pointwise_conv

__all__ = [
    "BankSparseConv",
    "BankSparseLinear",
    "BankSparseMultiheadAttention",
    "ConversionReport",
    "LayerReport",
    "calibrate",
    "is_pointwise_conv",
    "load_bank_sparse",
    "to_bank_sparse",
]
