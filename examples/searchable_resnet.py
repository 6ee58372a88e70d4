"""Make an existing model searchable: a torchvision ResNet-18 whose 3x3
convolutions (those keeping channels and resolution) each choose among
{conv 3x3, conv 5x5, dilated conv 3x3, skip}; a few alternating α/weight steps
(first-order DARTS: α on a validation batch, then the weights on a training
batch); then export as a plain model with the chosen operations.

Runs on random CIFAR-sized data so it needs no download:
    python examples/searchable_resnet.py --steps 20
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from pynas.nn import arch_parameters, export, layer_choices, make_searchable, weight_parameters


def conv_candidates(name, module):
    """Alternatives for a 3x3 convolution that keeps its channels and resolution."""
    if not (isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and module.stride == (1, 1)
            and module.in_channels == module.out_channels):
        return None
    C = module.in_channels
    return {
        "conv_3x3": module,
        "conv_5x5": nn.Conv2d(C, C, 5, padding=2, bias=False),
        "dil_conv_3x3": nn.Conv2d(C, C, 3, padding=2, dilation=2, bias=False),
        "skip_connect": nn.Identity(),
    }


def build(num_classes=10):
    model = torchvision.models.resnet18(num_classes=num_classes)
    return make_searchable(model, conv_candidates)


def search(model, steps, batch_size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    data = lambda: (torch.randn(batch_size, 3, 32, 32, generator=gen), torch.randint(0, 10, (batch_size,), generator=gen))
    w_opt = torch.optim.SGD(weight_parameters(model), lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(arch_parameters(model), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    model.train()
    for _ in range(steps):
        x_val, y_val = data()
        a_opt.zero_grad()
        F.cross_entropy(model(x_val), y_val).backward()
        a_opt.step()
        x, y = data()
        w_opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        nn.utils.clip_grad_norm_(weight_parameters(model), 5.0)
        w_opt.step()
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    model = search(build(), args.steps)
    choices = [layer.chosen() for layer in layer_choices(model)]
    child = export(model)
    print(f"{len(choices)} searchable layers; chosen: {choices}")
    print(f"exported: {sum(p.numel() for p in child.parameters()):,} parameters")
    return child, choices


if __name__ == "__main__":
    main()
