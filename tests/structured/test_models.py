"""Every architecture of the list: the shrunk model computes what the masked one did, trains one
step, and exports to ONNX that onnxruntime runs with the same outputs."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from pruning_tools import Prune, shrink
from pruning_tools.benchmarks import structured_models as zoo
from pruning_tools.benchmarks.models import bert_encoder, resnet50
from pruning_tools.demo.lm.model import GPT, GPTConfig
from pruning_tools.demo.torch_backend import SimpleCNN

TOLERANCE = 1e-4


def _tensor(out: object) -> Tensor:
    """The first output tensor (logits of a Hugging Face output, the first of a tuple)."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return _tensor(out[0])  # type: ignore[index]


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _ids(vocab: int = 100, length: int = 8) -> tuple[Tensor]:
    return (torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(0)),)


def _image(size: int = 32) -> tuple[Tensor]:
    return (torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)),)


def _hf(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from tests import tiny_transformers as T

        if name == "llama_gqa":
            transformers = pytest.importorskip("transformers")
            torch.manual_seed(0)
            config = transformers.LlamaConfig(
                vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0,
            )  # fmt: skip
            return transformers.LlamaForCausalLM(config)
        return {"bert": T.tiny_bert, "gpt2": T.tiny_gpt2}[name]()

    return build


# name -> (build, example inputs, groups of heads expected among the pruned groups)
MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple], int]] = {
    "resnet18": (lambda: zoo.ResNet18(width=8), _image, 0),
    "resnet50": (lambda: resnet50(width=8, num_classes=10, blocks=(2, 1, 1, 1)), _image, 0),
    "mobilenet_v2": (zoo.MobileNetV2, _image, 0),
    "densenet": (zoo.DenseNet, lambda: _image(16), 0),
    "vgg": (zoo.VGG, lambda: _image(16), 0),
    "vit": (zoo.ViT, lambda: _image(16), 2),
    "vit_mha": (lambda: zoo.ViT(builtin=True), lambda: _image(16), 0),
    "transformer_encoder": (
        lambda: bert_encoder(hidden=32, heads=4, ffn=64, layers=2),
        lambda: (torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(0)),),
        0,
    ),
    "bert": (_hf("bert"), _ids, 2),
    "gpt2": (_hf("gpt2"), _ids, 2),
    "llama_gqa": (_hf("llama_gqa"), _ids, 2),
    "mnist_cnn": (SimpleCNN, lambda: (torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)),), 0),
    "lm_gpt": (lambda: GPT(GPTConfig(layers=2, d_model=32, heads=4, context=16)), lambda: _ids(256, 16), 2),
}


class HFLogits(nn.Module):
    """``(input_ids, attention_mask) -> logits`` of a Hugging Face model (what ONNX export takes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.model(input_ids=ids, attention_mask=mask).logits


def prune_and_shrink(name: str, fraction: float = 0.5) -> tuple[nn.Module, tuple, Tensor, Prune, object]:
    """Build, prune ``fraction`` of every channel group at once, shrink.

    Returns ``(model, inputs, masked output, prune, report)``."""
    build, inputs_of, _ = MODELS[name]
    torch.manual_seed(0)
    model, inputs = build(), inputs_of()
    for m in model.modules():  # non-trivial BatchNorm statistics, so that a wrong slice shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
    model.eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="structure='channel': the output channels")
        prune = Prune(model, 0, 0, 1, {"*": fraction}, structure="channel", example_inputs=inputs)
    prune.prune()
    with torch.no_grad():
        masked = _tensor(model(*inputs)).clone()
    report = shrink(model, prune)
    return model, inputs, masked, prune, report


@pytest.mark.parametrize("name", list(MODELS))
def test_shrunk_equals_masked_trains_and_exports(name: str, tmp_path) -> None:
    before = sum(p.numel() for p in MODELS[name][0]().parameters())
    model, inputs, masked, prune, report = prune_and_shrink(name)
    with torch.no_grad():
        shrunk = _tensor(model(*inputs))
    assert rel_err(shrunk, masked) <= TOLERANCE, str(report)
    assert report.params_after < report.params_before == before
    heads = sum(1 for g in report.groups if g.units_before != g.channels_before)
    assert heads >= MODELS[name][2], str(report)
    # one training step
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    _tensor(model(*inputs)).float().pow(2).mean().backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # ONNX, run in onnxruntime
    ort = pytest.importorskip("onnxruntime")
    from pruning_tools.onnx import export_onnx

    model.eval()
    if hasattr(model, "config") and hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # a KV cache object is no ONNX output
    with torch.no_grad():
        expected = _tensor(model(*inputs))
    path = tmp_path / "shrunk.onnx"
    if hasattr(
        getattr(model, "config", None), "use_cache"
    ):  # Hugging Face: an explicit mask keeps mask-building ops ONNX lacks out
        model, inputs = HFLogits(model), (inputs[0], torch.ones_like(inputs[0]))
    export_onnx(model, inputs, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    got = torch.from_numpy(session.run(None, feeds)[0])
    assert rel_err(got, expected) <= TOLERANCE
