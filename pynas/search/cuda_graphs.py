"""``--cuda-graphs``: the whole soft search step captured into one CUDA graph and replayed.

A DARTS supernet step launches thousands of small kernels (forward, backward and
both optimisers over ~900 parameters); on a fast GPU the host's launch time, not
the device, bounds it. A CUDA graph records the step's kernels once and replays
them with one launch. What a graph needs, and how the step meets it:

- no host synchronisation inside (the soft methods' step has none: test_host_sync),
  and no tensor made from host data inside (test_cuda_graphs checks the body's
  operators: no ``lift_fresh``, no advanced indexing, no ``.item()``);
- inputs at fixed addresses: each step's batch (and SDARTS-RS' noise, drawn on the
  host) is copied into tensors the graph reads;
- optimiser state on the device: α's Adam is made ``capturable`` (its step count
  lives on the GPU, and its bias correction is computed there);
- what the host decides stays fixed while a graph lives: the learning rates (the
  schedules step per epoch), τ, whether α trains, and the batch's shape form the
  graph's key. A new key (each epoch; the last, smaller batch) runs eager steps
  first, which create any lazy state (momentum buffers, Adam's moments, cached
  column indices) outside the graph, and then captures again.

Methods that sample on the host or from a ``torch.Generator`` (gdas, dsnas, snas,
uniform), SGAS (its decisions index α from host lists) and data parallel runs are
refused with a reason.
"""
import warnings
from typing import Callable, Dict, List, Optional

import torch

# The soft-relaxation methods whose step body is capturable.
GRAPH_METHODS = ("darts", "darts-2nd", "single-level", "sdarts-rs", "fixed")

Replay = Callable[[], Dict[str, torch.Tensor]]


def check_cuda_graphs(method: str, device: str, *, relaxation: Optional[str] = None, world: int = 1,
                      compile: bool = False, checkpoint_cells: bool = False, tau_schedule: Optional[str] = None,
                      option: str = "--cuda-graphs") -> None:
    """Raises ValueError, naming the conflicting option, where a run cannot replay its step from a graph."""
    if device != "cuda":
        raise ValueError(f"{option} needs --device cuda (CUDA graphs), got --device {device}")
    if method not in GRAPH_METHODS:
        raise ValueError(f"{option} captures the soft methods' step ({', '.join(GRAPH_METHODS)}), not --method "
                         f"{method}: its step samples on the host, from a torch.Generator, or indexes α from host lists")
    if relaxation not in (None, "softmax", "sigmoid"):
        raise ValueError(f"{option} needs a deterministic relaxation (softmax or sigmoid), got --relaxation {relaxation}")
    if world > 1:
        raise ValueError(f"{option} runs in one process; drop --nproc (its all_reduce calls are not captured)")
    if compile:
        raise ValueError(f"{option} and --compile: use one (torch.compile's mode='reduce-overhead' graphs itself)")
    if checkpoint_cells:
        raise ValueError(f"{option} and --checkpoint-cells: checkpointing saves and restores the RNG state "
                         f"from the host in every step; use one")
    if tau_schedule is not None:
        raise ValueError(f"{option} and --tau-schedule: τ would change every step, and with it the graph")


def cuda_capture(body: Replay) -> Replay:
    """Captures ``body`` (its kernels run only when replayed) into a CUDA graph;
    returns the replay, which gives the body's outputs (the same tensors each time)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = body()

    def replay():
        graph.replay()
        return outputs

    replay.graph = graph  # keeps the graph (and its memory pool) as long as the replay
    return replay


def make_capturable(optimizer: Optional[torch.optim.Optimizer]) -> None:
    """An Adam keeps its step count on its parameters' device and computes its
    bias correction there (a host count would be baked into a graph); other
    optimisers (SGD) have no host state and are left as they are."""
    if not isinstance(optimizer, torch.optim.Adam):
        return
    for group in optimizer.param_groups:
        group["capturable"] = True
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "step" in state:
                state["step"] = state["step"].to(p.device)


class GraphedStep:
    """``strategy.step`` with the body replayed from a graph: call it as the step.

    ``capture`` turns the body into a replay (:func:`cuda_capture`; tests pass
    one that reruns the body, to check this wrapper on the CPU). ``warmup``
    eager steps run before the first capture of the process, one before each
    later capture. Counts: ``eager_steps``, ``captures``, ``replays``."""

    def __init__(self, strategy, capture: Callable[[Replay], Replay] = cuda_capture, warmup: int = 3):
        self.strategy, self.capture = strategy, capture
        self.warmup = max(1, warmup)
        self.eager_steps = self.captures = self.replays = 0
        self._key = None
        self._replay: Optional[Replay] = None
        self._eager_left = self.warmup
        self._static: List[torch.Tensor] = []
        self._static_inputs: Dict[str, torch.Tensor] = {}
        cuda = strategy.device.type == "cuda"
        self._side = torch.cuda.Stream(strategy.device) if cuda else None
        if cuda:
            make_capturable(strategy.a_opt)

    def __call__(self, train_batch, val_batch):
        s = self.strategy
        alpha_trains = s.prepare_step()
        batches = [*train_batch, *(val_batch if val_batch is not None else ())]
        key = (s.epochs_done, alpha_trains, s.model.arch.temperature,
               tuple((tuple(t.shape), t.dtype) for t in batches))
        if key != self._key:
            self._release()
            self._key, self._eager_left = key, max(self._eager_left, 1)
        if self._eager_left > 0:
            self._eager_left -= 1
            metrics = self._eager(train_batch, val_batch, alpha_trains)
        else:
            if self._replay is None:
                self._capture(batches, val_batch is not None, alpha_trains)
            with torch.no_grad():
                for static, t in zip(self._static, batches):
                    static.copy_(t, non_blocking=True)
                for name, t in s.step_inputs().items():
                    self._static_inputs[name].copy_(t)
            s.use_step_inputs(self._static_inputs)
            metrics = {k: v.clone() for k, v in self._replay().items()}
            self.replays += 1
        s.global_step += 1
        return metrics

    def _eager(self, train_batch, val_batch, alpha_trains):
        self.eager_steps += 1
        if self._side is None:
            return self.strategy.step_body(train_batch, val_batch, alpha_trains)
        # On a side stream, as PyTorch's recipe for the steps before a capture. α's Adam is capturable
        # from the start (its state is then made on the device): its warning about running uncaptured is
        # expected here.
        current = torch.cuda.current_stream(self._side.device)
        self._side.wait_stream(current)
        with torch.cuda.stream(self._side), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
            metrics = self.strategy.step_body(train_batch, val_batch, alpha_trains)
        current.wait_stream(self._side)
        for t in metrics.values():  # read on the current stream: not reused before that read is done
            t.record_stream(current)
        return metrics

    def _capture(self, batches, bilevel, alpha_trains):
        s = self.strategy
        if self._side is not None:  # again: a resumed optimiser's state may say otherwise
            make_capturable(self.strategy.a_opt)
        self._static = [t.to(s.device, copy=True) for t in batches]
        self._static_inputs = {name: t.clone() for name, t in s.step_inputs().items()}
        s.use_step_inputs(self._static_inputs)
        train = tuple(self._static[:2])
        val = tuple(self._static[2:]) if bilevel else None
        self._replay = self.capture(lambda: s.step_body(train, val, alpha_trains))
        self.captures += 1

    def _release(self):
        """Drops the graph: its memory pool is freed once nothing else holds its
        tensors (gradients point into it: they are dropped too)."""
        if self._replay is None:
            return
        self._replay, self._static, self._static_inputs = None, [], {}
        for p in [*self.strategy.weights, *self.strategy.alphas]:
            p.grad = None
