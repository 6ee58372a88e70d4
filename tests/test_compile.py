"""A small MixedOp-like module using every op compiles with fullgraph=True and matches eager.

Dynamo, AOTAutograd and the fake kernels are checked with the ``aot_eager`` backend
(no code generation); one case also goes through Inductor, the default backend."""
import pytest
import torch
import torch.nn as nn

from pynas.functional import edge_cost, gumbel_softmax, mixed_sum

from conftest import DEVICES


class TinyMixedOp(nn.Module):
    """Candidate ops of one edge, mixed by relaxed architecture weights."""

    def __init__(self, C, sample):
        super().__init__()
        self.ops = nn.ModuleList([nn.Conv2d(C, C, 3, padding=1, bias=False), nn.AvgPool2d(3, 1, 1), nn.Identity()])
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(self.ops)))
        self.sample = sample

    def forward(self, x):
        if self.sample:
            weights = gumbel_softmax(self.alpha.expand(x.size(0), -1), tau=0.5)
        else:
            weights = self.alpha.softmax(-1)
        outputs = [op(x) for op in self.ops]
        y = mixed_sum(outputs, weights)
        return y, edge_cost(y.detach(), outputs, per_sample=self.sample)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sample, backend", [(False, "aot_eager"), (True, "aot_eager"), (False, "inductor")])
def test_compiled_module_matches_eager(device, sample, backend):
    torch.manual_seed(0)
    model = TinyMixedOp(4, sample).to(device)
    x = torch.randn(2, 4, 6, 6, device=device).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    results = []
    for fn in (model, compiled):
        torch.manual_seed(1)
        if device == "cuda":
            torch.cuda.manual_seed(1)
        y, cost = fn(x)
        grads = torch.autograd.grad(y.square().sum(), [model.alpha, model.ops[0].weight])
        results.append((y, cost, grads))
    (y0, c0, g0), (y1, c1, g1) = results
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(c1, c0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b)
