"""A converted Hugging Face model refuses ``save_pretrained``: its bank-sparse layers hold packed tensors
(``values``, ``indices``, ...) under names its class's ``from_pretrained`` does not read, so the saved
model would load with those layers re-initialised at random and only transformers' load report to say
so. The refusal names the two ways that keep the model:

- save the pruned (masked, dense) model with ``save_pretrained`` *before* converting, and convert again
  after ``from_pretrained`` (``to_bank_sparse(model, prune_state)``);
- or ``pruning-tools export CHECKPOINT OUT.safetensors --pruner-state STATE`` (or
  ``export.save_packed``), then ``load_bank_sparse(model_class(config), OUT.safetensors)``.

``state_dict()`` itself stays available: it loads into a model converted the same way
(``load_state_dict`` checks the packed tensors), which is how ``copy.deepcopy`` and checkpoints of a
converted model round-trip.
"""

from __future__ import annotations

from typing import Any, NoReturn

from torch import nn

MESSAGE = (
    "{cls}.save_pretrained is refused: this model holds bank-sparse layers ({layers}), whose packed tensors "
    "{cls}.from_pretrained does not read (it would re-initialise those layers at random). Keep the model "
    "instead by saving the pruned model before to_bank_sparse (save_pretrained of the masked model; convert "
    "again after from_pretrained), or by `pruning-tools export CHECKPOINT OUT.safetensors --pruner-state STATE` "
    "and `pruning_tools.load_bank_sparse(model, 'OUT.safetensors')`."
)


def is_hf_pretrained(module: nn.Module) -> bool:
    """A transformers ``PreTrainedModel`` (found by class, transformers is never imported for it)."""
    return any(
        klass.__name__ == "PreTrainedModel" and klass.__module__.startswith("transformers")
        for klass in type(module).__mro__
    )


def refuse_save_pretrained(model: nn.Module, converted: list[str]) -> list[str]:
    """Make ``save_pretrained`` (and so ``push_to_hub``) of every Hugging Face model in ``model``'s tree
    that holds one of the ``converted`` modules raise, with the message above. Returns their names."""
    guarded = []
    for name, module in model.named_modules():
        if not is_hf_pretrained(module):
            continue
        inside = [c for c in converted if not name or c == name or c.startswith(name + ".")]
        if not inside:
            continue
        relative = [c[len(name) + 1 :] if name else c for c in inside]
        shown = ", ".join(relative[:3]) + (f" and {len(relative) - 3} more" if len(relative) > 3 else "")
        text = MESSAGE.format(cls=type(module).__name__, layers=shown)

        def refuse(*args: Any, _text: str = text, **kwargs: Any) -> NoReturn:
            raise RuntimeError(_text)

        module.__dict__["save_pretrained"] = refuse  # this instance only; the class is untouched
        guarded.append(name)
    return guarded


__all__ = ["MESSAGE", "is_hf_pretrained", "refuse_save_pretrained"]
