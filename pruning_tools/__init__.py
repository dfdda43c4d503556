"""pruning-tools: gradual magnitude pruning, unstructured or bank-balanced, for PyTorch and MXNet."""

from .masks import BankCheck, bank_mask, check_banks, unstructured_mask
from .pytorch_pruning import Prune
from .schedule import schedule_step, target_sparsity

__all__ = ["Prune", "BankCheck", "bank_mask", "check_banks", "unstructured_mask", "schedule_step", "target_sparsity"]
__version__ = "0.1.0"
