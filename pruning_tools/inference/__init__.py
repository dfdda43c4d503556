"""Inference from packed bank-sparse weights: modules computing straight from values + indices, and
the conversion of a pruned model to them."""

from .convert import to_bank_sparse
from .modules import BankSparseConv1x1, BankSparseLinear, is_pointwise_conv

__all__ = ["BankSparseConv1x1", "BankSparseLinear", "is_pointwise_conv", "to_bank_sparse"]
