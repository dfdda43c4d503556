"""Every ```python block of README.md runs, in order, in one namespace per block. A block that needs
an optional extra which is not installed (transformers, lightning, peft, ...) is skipped, saying
which; CI installs every extra, so there every block runs."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
OPTIONAL = {"transformers", "accelerate", "peft", "lightning", "pytorch_lightning", "mxnet", "onnx", "onnxruntime"}
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert BLOCKS, "README.md has no python example"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {"__name__": "__readme__"})
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in OPTIONAL:
            raise
        pytest.skip(f"needs the optional {error.name!r}")
