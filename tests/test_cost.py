"""SNAS resource costs (App. F) and the three estimators of E_Z[C(Z)]."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from pynas.arch import Architecture
from pynas.functional import gumbel_softmax
from pynas.nn import DARTS, NB201, SearchNetwork
from pynas.nn.ops import build_op
from pynas.search.cost import ResourceConstraint, network_costs, op_costs


@pytest.mark.parametrize("name", sorted(set(DARTS.ops) | set(NB201.ops)))
@pytest.mark.parametrize("stride", [1, 2])
def test_parameter_size_equals_the_ops_convolution_weights(name, stride):
    # Eq. 35 summed over an op's convolutions = the weights of the module pynas builds.
    module = build_op(name, 16, stride, affine=False)
    conv_weights = sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))
    assert op_costs(name, 16, stride, 32, 32)[0] == conv_weights


def test_known_shapes_by_hand():
    C, H = 16, 32
    # sep_conv_3x3, stride 1: (dw 3x3 + pw 1x1) twice.
    p = 2 * (9 * C * C / C + C * C)
    assert op_costs("sep_conv_3x3", C, 1, H, H) == (p, H * H * p, 4 * H * H * (C + C) + p)
    # dil_conv_5x5, stride 2: dw 5x5 at stride 2 then pw 1x1, on a 16x16 output; the dw reads the whole 32x32
    # input (SNAS' code; this was 256·2·(2C) + P, the input priced at the output's size, before).
    p_dw, p_pw = 25 * C * C / C, C * C
    assert op_costs("dil_conv_5x5", C, 2, H, H) == (p_dw + p_pw, 256 * (p_dw + p_pw),
                                                    H * H * C + 256 * C + 256 * 2 * C + p_dw + p_pw)
    # Pool (Eq. 38, 40), skip (Eq. 39, 40), none.
    assert op_costs("max_pool_3x3", C, 1, H, H) == (0, H * H * 9 * C, H * H * 2 * C)
    # stride 2: k² per output element and channel; MAC reads the whole input and writes a quarter of it
    assert op_costs("avg_pool_3x3", C, 2, H, H) == (0, (H // 2) ** 2 * 9 * C, H * H * C + (H // 2) ** 2 * C)
    assert op_costs("max_pool_3x3", C, 1, H, H)[1] < op_costs("sep_conv_3x3", C, 1, H, H)[1]
    assert op_costs("skip_connect", C, 1, H, H) == (0, 0, H * H * 2 * C)
    assert op_costs("none", C, 1, H, H) == (0, 0, 0)
    with pytest.raises(ValueError, match="no resource cost formula"):
        op_costs("mystery_op", C, 1, H, H)


def _snas_code_mac(name, C, stride, y):
    """The MAC SNAS' public code gives an op with a y x y output (SNAS-Series, SNAS/operations.py, each op's
    `forward`; P its `size`): a stride-2 op reads its whole input, 4·y² per channel."""
    if name.startswith("sep_conv"):
        k = int(name[-1])
        return y * y * ({1: 7, 2: 10}[stride] * C + C) + 2 * C * k * k + (C + C) * C
    if name.startswith("dil_conv"):
        k = int(name[-1])
        return y * y * ({1: 3, 2: 6}[stride] * C + C) + C * k * k + C * C
    if name.startswith("nor_conv"):  # NB201's ReLU-conv-BN, priced as the code's ReLUConvBN
        k = int(name[-1])
        return y * y * ({1: 1, 2: 4}[stride] * C + C) + C * C * k * k
    if name == "skip_connect":  # Identity; FactorizedReduce at stride 2
        return 2 * C * y * y if stride == 1 else 2 * y * y * (4 * C + C // 2) + 2 * C * (C // 2)
    return {1: 2, 2: 5}[stride] * y * y * C  # max and avg pools


@pytest.mark.parametrize("name", ["sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "dil_conv_3x3", "dil_conv_5x5",
                                  "skip_connect", "max_pool_3x3", "avg_pool_3x3", "nor_conv_1x1", "nor_conv_3x3"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("C", [16, 6])
def test_mac_is_the_snas_codes(name, stride, C):
    H = 32
    assert op_costs(name, C, stride, H, H)[2] == float(_snas_code_mac(name, C, stride, H // stride))


def test_a_strided_op_reads_an_odd_sided_input_at_its_own_size():
    # 7x7 -> 4x4 (padding 1): the code's 4·y² assumes an even side; pynas reads the 49 input pixels. sep_conv_3x3:
    # dw reads 49·C, writes 16·C; pw, dw, pw each read and write 16·C.
    C = 4
    P = 2 * (9 * C + C * C)
    assert op_costs("sep_conv_3x3", C, 2, 7, 7)[2] == 49.0 * C + 16 * C + 3 * 16 * 2 * C + P
    # factorized reduce: two 1x1 stride-2 convs, each reading the whole input and writing C/2 channels
    assert op_costs("skip_connect", C, 2, 7, 7)[2] == 2 * (49.0 * C + 16 * C // 2) + 2 * C * (C // 2)


def test_network_cost_tables_sum_the_cells_of_each_type():
    model = SearchNetwork(C=4, layers=5, steps=2, multiplier=2, in_channels=1)
    tables = network_costs(model, 16)
    k = DARTS.ops.index("sep_conv_3x3")
    # normal cells: 0 (C=4, 16x16), 2 (C=8, 8x8), 4 (C=16, 4x4); edge 0 is from input 0, stride 1.
    want = sum(op_costs("sep_conv_3x3", C, 1, H, H)[0] for C, H in ((4, 16), (8, 8), (16, 4)))
    assert tables["normal"][0, 0, k] == want
    assert tables["normal"].shape == (3, 5, 8) and tables["reduce"].shape == (3, 5, 8)


def test_three_estimators_agree_in_expectation():
    torch.manual_seed(0)
    model = SearchNetwork(C=4, layers=3, steps=2, multiplier=2, in_channels=1, relaxation="gumbel",
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a in model.arch_parameters():
            a.copy_(torch.randn_like(a))
    model.arch.temperature = 0.02  # soft samples close to one-hot: E[Z] ≈ softmax(α)
    constraint = ResourceConstraint(weight=1.0)
    tables = constraint.tables(model, 8)
    alphas = list(model.arch_parameters())

    def estimate(estimator, n):
        constraint.estimator = estimator
        values, grads = [], []
        for _ in range(n):
            value = constraint.penalty(model.arch, tables)
            grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(value, alphas)]))
            values.append(float(value))
        return torch.tensor(values), torch.stack(grads)

    exact_value, exact_grad = estimate("analytic", 1)
    samples = {e: estimate(e, 1500) for e in ("reparameterised", "policy")}
    for values, _ in samples.values():
        se = values.std() / len(values) ** 0.5
        assert abs(values.mean() - exact_value[0]) < 5 * se + 1e-3
    # The score-function gradient is unbiased for the analytic one.
    grads = samples["policy"][1]
    mean, se = grads.mean(0), grads.std(0) / len(grads) ** 0.5
    assert ((mean - exact_grad[0]).abs() <= 5 * se + 1e-4).float().mean() > 0.97


def test_snas_with_constraint_runs_and_prefers_cheap_ops():
    from pynas.search import SearchConfig, Snas

    torch.manual_seed(0)
    model = SearchNetwork(C=4, num_classes=3, layers=3, steps=2, multiplier=2, in_channels=1, relaxation="gumbel",
                          generator=torch.Generator().manual_seed(0))
    constraint = ResourceConstraint(weight=100.0, estimator="analytic")
    strategy = Snas(model, SearchConfig(epochs=1, a_lr=0.05), 20, constraint=constraint, image_size=8)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    for _ in range(20):
        strategy.step((x, y), None)
    p = model.arch.probabilities("normal")
    free = [DARTS.ops.index(o) for o in ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3")]
    assert p[:, free].sum(-1).mean() > 0.6  # a heavy constraint pushes α to parameter-free operations,
    assert bool((p.argmax(-1) == DARTS.ops.index("none")).all())  # most of all to the one that costs nothing


# -- fresh samples of the reparameterised penalty --------------------------------------------------------------


def _penalty_setup():
    """An architecture with random α and five cells' tables, as a supernet's: every table differs, so
    swapping the two cell types' draws changes the penalty."""
    g = torch.Generator().manual_seed(1)
    arch = Architecture("darts", 14, ("normal", "reduce"), relaxation="gumbel",
                        generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        for a in arch.alphas.values():
            a.copy_(torch.randn(a.shape, generator=g, dtype=torch.float64))
    arch.temperature = 0.7
    types = ("normal", "normal", "reduce", "normal", "reduce")
    return arch, [(t, torch.rand(14, 8, generator=g, dtype=torch.float64)) for t in types]


def test_fresh_samples_do_not_depend_on_the_hash_seed():
    script = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
              "from test_cost import ResourceConstraint, _penalty_setup\n"
              "arch, tables = _penalty_setup()\n"
              "print(list({t for t, _ in tables}), repr(float(ResourceConstraint(weight=1.0).penalty(arch, tables))))")
    outputs = []
    for seed in ("0", "4"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.strip().rsplit(" ", 1))
    (order0, value0), (order4, value4) = outputs
    assert order0 != order4  # the two hash seeds iterate the set of cell types in different orders
    assert value0 == value4


def test_fresh_samples_are_drawn_in_the_architectures_cell_type_order():
    arch, tables = _penalty_setup()
    assert arch.cell_types == ("normal", "reduce")
    value = ResourceConstraint(weight=0.5).penalty(arch, tables)
    g = torch.Generator().manual_seed(0)  # the architecture's generator, drawn normal first, then reduce
    z = {t: gumbel_softmax(arch.alphas[t].detach(), tau=0.7, generator=g) for t in arch.cell_types}
    expected = 0.5 * sum(float((z[t] * table).sum()) for t, table in tables)
    assert float(value.detach()) == pytest.approx(expected, rel=1e-12)

