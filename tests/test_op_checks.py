"""Every op refuses bad arguments alike on every device, the fake (meta) kernels
included, and the numerics at the edges are defined (issue 17, sections 1 and 3)."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pynas
from pynas import functional

ops = torch.ops.pynas
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64]


def outcome(call):
    """("ok", shapes and dtypes of the result) or (exception type, message)."""
    try:
        out = call()
    except (ValueError, TypeError, IndexError, RuntimeError) as e:
        return type(e), str(e).splitlines()[0]
    flat = out if isinstance(out, (tuple, list)) else [out]
    flat = [t for x in flat for t in (x if isinstance(x, list) else [x])]
    return "ok", [(tuple(t.shape), t.dtype) for t in flat]


def on(device, spec):
    """Tensors of ``spec`` ((shape, dtype) pairs) on ``device``."""
    return [torch.zeros(shape, dtype=dtype, device=device) for shape, dtype in spec]


shapes = st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple)
dtypes = st.sampled_from(DTYPES)


@SETTINGS
@given(outs=st.lists(st.tuples(shapes, dtypes), min_size=0, max_size=3), weights=st.tuples(shapes, dtypes))
def test_mixed_sum_meta_and_cpu_agree_on_every_input(outs, weights):
    def call(device):
        return lambda: ops.mixed_sum(on(device, outs), on(device, [weights])[0])

    assert outcome(call("meta")) == outcome(call("cpu"))


@SETTINGS
@given(outs=st.lists(st.tuples(shapes, dtypes), min_size=1, max_size=3), grad=st.tuples(shapes, dtypes),
       weights=st.tuples(shapes, dtypes))
def test_backward_and_edge_cost_meta_and_cpu_agree_on_every_input(outs, grad, weights):
    for device_call in (
        lambda d: ops.mixed_sum_backward(on(d, [grad])[0], on(d, outs), on(d, [weights])[0], True, True),
        lambda d: ops.edge_cost(on(d, [grad])[0], on(d, outs), False),
        lambda d: ops.edge_cost(on(d, [grad])[0], on(d, outs), True),
    ):
        assert outcome(lambda: device_call("meta")) == outcome(lambda: device_call("cpu"))


@SETTINGS
@given(shape=shapes, dtype=dtypes, dim=st.integers(-5, 5),
       tau=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-39, 5e-324])))
def test_gumbel_softmax_meta_and_cpu_agree_on_every_input(shape, dtype, dim, tau):
    for call in (lambda d: ops.gumbel_softmax(on(d, [(shape, dtype)])[0], tau, False, dim, None),
                 lambda d: ops.gumbel_softmax_backward(*on(d, [(shape, dtype)] * 2), tau, dim)):
        assert outcome(lambda: call("meta")) == outcome(lambda: call("cpu"))


@pytest.mark.parametrize("tau, shown", [(0.0, "0"), (-1.0, "-1"), (float("nan"), "nan"), (-float("nan"), "nan"),
                                        (float("inf"), "inf"), (-float("inf"), "-inf")])
def test_tau_must_be_finite_and_positive(tau, shown):
    # The kernel and the fake kernel print tau alike (a NaN's sign bit is not shown).
    for device in ("cpu", "meta"):
        for op in (lambda: ops.gumbel_softmax(torch.zeros(2, 3, device=device), tau, False, -1, None),
                   lambda: ops.gumbel_softmax_backward(*[torch.zeros(2, 3, device=device)] * 2, tau, -1)):
            with pytest.raises(ValueError, match=f"`tau` must be a finite positive number, got {shown}$"):
                op()


@pytest.mark.parametrize("tau", ["1", None, True, [1.0]])
def test_tau_of_the_wrong_type_names_tau(tau):
    with pytest.raises(TypeError, match="`tau` must be a number"):
        pynas.gumbel_softmax(torch.zeros(2, 3), tau=tau)


def test_out_of_range_dim_is_refused_alike():
    messages = set()
    for device in ("cpu", "meta"):
        with pytest.raises(IndexError, match=r"`dim` must be in \[-2, 1\]") as e:
            pynas.gumbel_softmax(torch.zeros(2, 3, device=device), dim=2)
        messages.add(str(e.value))
    assert len(messages) == 1


def mixed(parts):
    return [torch.zeros(2, 3, device=d) for d in parts]


@pytest.mark.parametrize("devices", [("meta", "cpu"), ("cpu", "meta")])
def test_a_meta_tensor_among_cpu_tensors_is_refused(devices):
    with pytest.raises(ValueError, match=r"outputs\[1\] is on (meta|cpu) but outputs\[0\] is on"):
        pynas.mixed_sum(mixed(devices), torch.ones(2))
    with pytest.raises(ValueError, match="`weights` is on meta but the outputs are on cpu"):
        pynas.mixed_sum(mixed(("cpu", "cpu")), torch.ones(2, device="meta"))
    with pytest.raises(ValueError, match="`grad` is on meta but the outputs are on cpu"):
        pynas.edge_cost(torch.zeros(2, 3, device="meta"), mixed(("cpu", "cpu")))
    with pytest.raises(ValueError, match="`grad` is on cpu but `soft` is on meta"):
        ops.gumbel_softmax_backward(torch.zeros(2, 3), torch.zeros(2, 3, device="meta"), 1.0, -1)


def test_all_meta_calls_with_mismatched_shapes_are_refused():
    meta = lambda *s: torch.zeros(*s, device="meta")
    with pytest.raises(ValueError, match=r"outputs\[1\] has shape \[3, 3\] but outputs\[0\] has shape \[2, 3\]"):
        pynas.mixed_sum([meta(2, 3), meta(3, 3)], meta(2))
    with pytest.raises(ValueError, match=r"`weights` has shape \[5\] but there are 2 outputs"):
        pynas.mixed_sum([meta(2, 3), meta(2, 3)], meta(5))


# -- numerics at the edges ------------------------------------------------------------


@SETTINGS
@given(dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]),
       tau=st.sampled_from([5e-324, 1e-300, 1e-45, 1e-39, 1e-20, 1e20, 1e39, 1e300, 1.7e308]),
       scale=st.sampled_from([1.0, 1e4, 6e4, 1e30, 3e38, 1e300]), seed=st.integers(0, 10))
def test_gumbel_softmax_is_finite_for_every_finite_input(dtype, tau, scale, seed):
    """Tiny and huge tau, logits whose differences overflow: the forward is finite and the
    backward never NaN: 0 where the soft sample is one-hot (the limit), else the exact
    value, which at a tie under a tiny tau is honestly infinite."""
    finfo = torch.finfo(dtype)
    logits = (torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64) * scale).clamp(finfo.min, finfo.max)
    x = logits.to(dtype).requires_grad_()
    for hard in (False, True):
        y = pynas.gumbel_softmax(x, tau=tau, hard=hard, generator=torch.Generator().manual_seed(seed))
        g, = torch.autograd.grad((y * torch.arange(4, dtype=dtype)).sum(), x)
        assert torch.isfinite(y).all() and not torch.isnan(g).any(), (y, g)
        assert abs(float(y.detach().double().sum()) - 1) < 1e-2
        soft = pynas.gumbel_softmax(x.detach(), tau=tau, generator=torch.Generator().manual_seed(seed))
        if sorted(soft.tolist())[-1] == 1:  # saturated: the gradient is its limit, 0
            assert g.abs().sum() == 0
        elif tau >= 1e-20:
            assert torch.isfinite(g).all()


def test_saturated_gumbel_softmax_has_zero_gradient():
    """A one-hot soft sample (tiny tau) has the limit gradient 0, not 0 * inf = NaN."""
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = pynas.gumbel_softmax(x, tau=1e-39, generator=torch.Generator().manual_seed(0))
    assert sorted(y.tolist()) == [0.0, 0.0, 1.0]
    g, = torch.autograd.grad((y * torch.tensor([1.0, 2.0, 3.0])).sum(), x)
    assert g.tolist() == [0.0, 0.0, 0.0]


def test_huge_tau_on_float32_logits_is_computed_in_double():
    """(v - max) / tau is formed in double: 6e38 / 1e39 is 0.6, not inf / inf = NaN."""
    x = torch.tensor([3e38, -3e38])
    g = torch.Generator().manual_seed(0)
    y = pynas.gumbel_softmax(x, tau=1e39, generator=g)
    assert torch.isfinite(y).all()
    assert 0.5 < float(y[0]) < 0.9  # softmax([0.3, -0.3] + G/1e39): about exp(0.6) / (1 + exp(0.6))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_float64_weights_beyond_float32_saturate(dtype):
    """0 * 1e300 is 0 as in float64 (not 0 * inf = NaN); a nonzero output saturates."""
    outputs = [torch.zeros(4, dtype=dtype), torch.ones(4, dtype=dtype)]
    weights = torch.tensor([1e300, 0.5], dtype=torch.float64)
    y = pynas.mixed_sum(outputs, weights)
    assert y.tolist() == [0.5] * 4
    reference = pynas.mixed_sum([o.double() for o in outputs], weights)
    assert reference.tolist() == [0.5] * 4
    big = pynas.mixed_sum([torch.ones(4, dtype=dtype)] * 2, torch.tensor([1e300, 0.0], dtype=torch.float64))
    assert (big.float() >= torch.finfo(torch.float32).max).all()  # float32's largest value, inf in half
    inf = pynas.mixed_sum(outputs, torch.tensor([math.inf, 0.5], dtype=torch.float64))
    assert torch.isnan(inf).all()  # an infinite weight stays infinite: 0 * inf as in float64
    grads = ops.mixed_sum_backward(torch.ones(4, dtype=dtype), outputs, weights, True, True)
    assert torch.isfinite(grads[1]).all()


def test_checks_run_under_fake_tensors_too():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a, b = torch.zeros(2, 3), torch.zeros(3, 3)
        with pytest.raises(ValueError, match="has shape"):
            functional.mixed_sum([a, b], torch.ones(2))
        with pytest.raises(ValueError, match="`tau`"):
            functional.gumbel_softmax(a, tau=0.0)
