"""The drop-in example: a searchable torchvision ResNet-18, searched and exported."""
import importlib.util
import pathlib

import torch
import torch.nn as nn

from pynas.nn import LayerChoice, export, layer_choices

EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "searchable_resnet.py"


def load_example():
    spec = importlib.util.spec_from_file_location("searchable_resnet", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_searches_and_exports_a_plain_model():
    example = load_example()
    child, choices = example.main(["--steps", "2"])
    # Every stride-1, channel-keeping 3x3 conv of ResNet-18: 4 in layer1, 3 in each later stage.
    assert len(choices) == 13
    assert not any(isinstance(m, LayerChoice) for m in child.modules())
    assert child(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_exported_model_computes_what_the_supernet_does_at_a_decided_alpha():
    example = load_example()
    torch.manual_seed(0)
    model = example.build()
    for i, layer in enumerate(layer_choices(model)):
        with torch.no_grad():
            layer.alpha.fill_(-100.0)
            layer.alpha[i % 4] = 100.0  # softmax is exactly one-hot in float32
    model.eval()
    child = export(model).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(child(x), model(x))
    kinds = {type(m) for layer in layer_choices(model) for m in [layer.export()]}
    assert nn.Identity in kinds and nn.Conv2d in kinds
