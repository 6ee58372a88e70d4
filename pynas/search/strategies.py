"""Search strategies: how one step updates the weights w and the architecture α.

Each strategy works on any model with ``weight_parameters()``,
``arch_parameters()`` and an ``arch`` (:class:`~pynas.arch.Architecture`), e.g.
:class:`~pynas.nn.SearchNetwork`. ``step(train_batch, val_batch)`` does one
search step; ``epoch_end()`` advances the learning-rate schedule.
"""
import contextlib
import json
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .parts import AuxSkipDecay, Perturbation, ResourceCost, Term
from .reduction import BUCKET_BYTES, OverlappedReduction, gradient_buckets

Batch = Tuple[torch.Tensor, torch.Tensor]


A_OPTIMIZERS = ("adam", "sgd")


@dataclass
class SearchConfig:
    """The public DARTS defaults (weights: SGD with cosine annealing; α: Adam).

    ``a_optimizer`` ``"sgd"`` uses ``a_momentum`` (Single-DARTS Table 5 tries
    both; SNAS' single-GPU code uses plain SGD); ``a_grad_clip`` clips α's
    gradient norm (SNAS: 10; None: no clipping, as DARTS). The first
    ``warmup_epochs`` epochs train the weights alone (PC-DARTS' code: 15).
    """

    epochs: int = 50
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    w_nesterov: bool = False
    grad_clip: float = 5.0
    a_lr: float = 3e-4
    a_betas: Tuple[float, float] = (0.5, 0.999)
    a_weight_decay: float = 1e-3
    a_optimizer: str = "adam"
    a_momentum: float = 0.0
    a_grad_clip: Optional[float] = None
    warmup_epochs: int = 0

    def __post_init__(self):
        if self.a_optimizer not in A_OPTIMIZERS:
            raise ValueError(f"--a-optimizer must be one of {A_OPTIMIZERS}, got {self.a_optimizer!r}")


def _global_norm(tensors: List[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t.detach().double() ** 2).sum() for t in tensors))


class Strategy:
    """Weight optimiser and schedule shared by every strategy, and the parts a
    method composes with its order (:mod:`pynas.search.parts`): ``terms`` of the
    objective, a ``perturbation`` of the weight step's edge weights, DARTS-'
    ``aux_skip`` schedule (the supernet built with ``aux_skip=True``)."""

    name = "base"
    bilevel = True  # whether step() uses the validation batch for α
    # Data parallel: the weights' gradients averaged while backward runs (True, pynas.search.reduction)
    # or after it with α's (False); None: while it runs on CUDA, after it on CPU, where it measured 8 %
    # slower (benchmarks/dp_scaling.py; likely gloo's communication thread competing for the cores).
    overlap_reduction: Optional[bool] = None

    def __init__(self, model: nn.Module, config: SearchConfig, steps_per_epoch: int,
                 loss_fn: Callable = F.cross_entropy, *, terms: Sequence[Term] = (),
                 perturbation: Optional[Perturbation] = None, aux_skip: Optional[AuxSkipDecay] = None):
        self.model, self.config, self.loss_fn = model, config, loss_fn
        self.terms = list(terms)
        self.perturbation = perturbation if perturbation is not None else Perturbation()
        self.aux_skip = aux_skip
        if aux_skip is not None and getattr(model, "aux_weight", None) is None:
            raise ValueError("an auxiliary skip schedule needs a supernet built with aux_skip=True")
        self._aux_epoch: Optional[int] = None  # the epoch whose β the supernet holds
        self.last_terms: Dict[str, torch.Tensor] = {}  # each term's value in the last loss it joined
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.weights = list(model.weight_parameters())
        self.alphas = list(model.arch_parameters())
        self.w_opt = torch.optim.SGD(self.weights, lr=config.w_lr, momentum=config.w_momentum,
                                     weight_decay=config.w_weight_decay, nesterov=config.w_nesterov)
        self.w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, config.epochs, eta_min=config.w_lr_min)
        self.a_opt = self._arch_optimizer(config) if self.alphas else None
        self.global_step = 0
        self.warmup_epochs = config.warmup_epochs
        self.epochs_done = 0
        self.device = next(iter(self.weights)).device
        self.forward = model  # may be replaced by a torch.compile'd model
        self.autocast_dtype: Optional[torch.dtype] = None  # e.g. torch.bfloat16
        self.channels_last = False
        self._weight_reduction: Optional[OverlappedReduction] = None

    def _arch_optimizer(self, config: SearchConfig) -> torch.optim.Optimizer:
        if config.a_optimizer == "sgd":
            return torch.optim.SGD(self.alphas, lr=config.a_lr, momentum=config.a_momentum,
                                   weight_decay=config.a_weight_decay)
        return torch.optim.Adam(self.alphas, lr=config.a_lr, betas=config.a_betas, weight_decay=config.a_weight_decay)

    def alpha_trains(self) -> bool:
        """Whether this step trains α: there is an α optimiser and the weights-only
        ``warmup_epochs`` are over (PC-DARTS' train_search.py: ``if epoch >= 15``)."""
        return self.a_opt is not None and self.epochs_done >= self.warmup_epochs

    def arch_optimizer_step(self) -> None:
        """α's step after its gradients are in place (clipped first where configured)."""
        if self.config.a_grad_clip is not None:
            nn.utils.clip_grad_norm_(self.alphas, self.config.a_grad_clip)
        self.a_opt.step()

    def weight_reduction(self) -> Optional[OverlappedReduction]:
        """Data parallel: the reduction that averages the weights' gradients
        during the weight step's backward (None alone, or where
        ``overlap_reduction`` says after backward)."""
        overlap = self.overlap_reduction if self.overlap_reduction is not None else self.device.type == "cuda"
        if self._weight_reduction is None and overlap and _world_size() > 1:
            self._weight_reduction = OverlappedReduction(self.weights)
        return self._weight_reduction

    def sync(self, params: List[torch.Tensor]) -> None:
        """Averages gradients over processes (data parallel) after backward; a no-op alone.

        The gradients are flattened into buckets of up to :data:`BUCKET_BYTES`
        (one per dtype and device at least), one ``all_reduce`` per bucket; α's
        gradients, tiny, fill one bucket. Every rank makes the same calls in the
        same order, so every rank steps with bit-identical gradients and keeps
        bit-identical α.

        α's gradients go this way (one small bucket), and the weights' where
        ``overlap_reduction`` says after backward (CPU's default); otherwise
        they are averaged while backward runs (:meth:`weight_reduction`)."""
        world = _world_size()
        if world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in gradient_buckets([p.grad for p in params], BUCKET_BYTES):
            if len(bucket) == 1:  # in place: flattening one tensor would give a view of it
                torch.distributed.all_reduce(bucket[0])
                bucket[0].div_(world)
                continue
            flat = torch._utils._flatten_dense_tensors(bucket)
            torch.distributed.all_reduce(flat)
            flat.div_(world)
            for g, averaged in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
                g.copy_(averaged)

    # -- pieces ---------------------------------------------------------------
    def loss(self, batch: Batch, role: Optional[str] = "weights") -> Tuple[torch.Tensor, torch.Tensor]:
        """(objective, logits) of ``batch``: the loss function plus the terms that
        join ``role``'s loss (``"alpha"``, ``"weights"``, ``"both"`` for a
        single-level step; None: the loss function alone). Terms shape what is
        optimised, so a loss computed without gradients (a measurement) has none."""
        x, y = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            logits = self.model(x) if self.forward is self.model else self.forward(x)
        if logits.dtype in (torch.float16, torch.bfloat16):  # the loss of a lower-precision model in float32
            logits = logits.float()
        loss = self.loss_fn(logits, y)
        if role is not None and torch.is_grad_enabled():
            for term in self.terms:
                if role == "both" or role in term.joins:
                    value = term.value(self.model)
                    self.last_terms[term.name] = value.detach()
                    loss = loss + term.weight(self.epochs_done) * value
        return loss, logits

    def weight_step(self, batch: Batch) -> Dict[str, float]:
        """The weights' step on ``batch``, under the perturbation's edge weights (if any)."""
        with self.perturbation.weight_step(self, batch):
            return self._weight_step(batch)

    def _weight_step(self, batch: Batch) -> Dict[str, float]:
        self.w_opt.zero_grad(set_to_none=True)
        loss, logits = self.loss(batch, "weights")
        reduction = self.weight_reduction()
        # Gradients for the weights only: the α side of every mixed_sum is skipped.
        with reduction.collecting() if reduction else contextlib.nullcontext():
            grads = torch.autograd.grad(loss, self.weights, allow_unused=True)
        if reduction is not None:
            grads = reduction.averaged()
        for w, g in zip(self.weights, grads):
            w.grad = g
        if reduction is None:
            self.sync(self.weights)
        nn.utils.clip_grad_norm_(self.weights, self.config.grad_clip)
        self.w_opt.step()
        return _metrics(loss, logits, batch[1])

    def arch_step(self, train_batch: Batch, val_batch: Batch) -> None:
        self.a_opt.zero_grad(set_to_none=True)
        loss, _ = self.loss(val_batch, "alpha")
        # A cell type's α can be cut off the loss (e.g. DARTS-PT leaving only `noise` ops downstream of it):
        # its gradient is then zero.
        grads = torch.autograd.grad(loss, self.alphas, allow_unused=True)
        for a, g in zip(self.alphas, grads):
            a.grad = _zero_if_none(g, a)
        self.sync(self.alphas)
        self.arch_optimizer_step()

    # -- the step -------------------------------------------------------------
    def step(self, train_batch: Batch, val_batch: Optional[Batch]) -> Dict[str, torch.Tensor]:
        """DARTS order: α first (on the validation batch), then the weights.
        Returns the weight step's metrics as 0-d tensors on the device (read
        them once per logging interval: reading is a host synchronisation)."""
        alpha_trains = self.prepare_step()
        metrics = self.step_body(train_batch, val_batch, alpha_trains)
        self.global_step += 1
        return metrics

    def prepare_step(self) -> bool:
        """The host's part of a step, before its device work: the schedules at
        this step (τ); returns whether α trains in it."""
        self.model.arch.set_position(self.global_step, self.steps_per_epoch, self.config.epochs)
        if self.aux_skip is not None and self._aux_epoch != self.epochs_done:  # β changes once per epoch
            self.model.set_aux_weight(self.aux_skip.at(self.epochs_done))
            self._aux_epoch = self.epochs_done
        self.perturbation.prepare(self)
        return self.alpha_trains()

    def step_body(self, train_batch: Batch, val_batch: Optional[Batch], alpha_trains: bool) -> Dict[str, torch.Tensor]:
        """The step's device work, given what :meth:`prepare_step` decided: what
        ``--cuda-graphs`` captures (so, for the soft methods, no host reads and no
        tensor made from host data in it; tests/test_cuda_graphs.py)."""
        arch = self.model.arch
        if alpha_trains:
            self.arch_step(train_batch, val_batch)
        # The weight step's α is the next α step's: under hard samples (GDAS) its forward draws that
        # step's sample too, so one host transfer a step tells both which operations to run.
        with arch.sampling_ahead(alpha_trains):
            return self.weight_step(train_batch)

    def step_inputs(self) -> Dict[str, torch.Tensor]:
        """Device tensors :meth:`prepare_step` made for this step's body (the
        perturbation's noise); a captured body reads copies of them that stay in place."""
        return self.perturbation.step_inputs()

    def use_step_inputs(self, inputs: Dict[str, torch.Tensor]) -> None:
        """The body reads ``inputs`` (of :meth:`step_inputs`' keys) from now on."""
        self.perturbation.use_step_inputs(inputs)

    def epoch_end(self) -> None:
        # A sample drawn ahead is given back, so that a checkpoint records the generator before it.
        self.model.arch.discard_sample_ahead()
        self.w_sched.step()
        self.epochs_done += 1

    def state_dict(self):
        return {"w_opt": self.w_opt.state_dict(), "w_sched": self.w_sched.state_dict(),
                "a_opt": self.a_opt.state_dict() if self.a_opt else None, "global_step": self.global_step,
                "epochs_done": self.epochs_done, **self.perturbation.state_dict()}

    def load_state_dict(self, state):
        self.w_opt.load_state_dict(state["w_opt"])
        self.w_sched.load_state_dict(state["w_sched"])
        if self.a_opt is not None:
            self.a_opt.load_state_dict(state["a_opt"])
        self.global_step = state["global_step"]
        # Checkpoints from before the count was kept (only SGAS', which always kept it, had a batch that
        # changes between epochs): the epoch from the step count.
        self.epochs_done = state.get("epochs_done", self.global_step // self.steps_per_epoch)
        self.perturbation.load_state_dict(state)


class DartsFirstOrder(Strategy):
    """DARTS (first order): ∇α L_val(w, α), then a weight step on L_train."""

    name = "darts"


class DartsSecondOrder(Strategy):
    """DARTS (second order): ∇α L_val(w', α) − η·H with the virtual step
    w' = w − η(momentum·buffer + ∇w L_train(w) + wd·w) and
    H = (∇α L_train(w⁺) − ∇α L_train(w⁻)) / 2R, w± = w ± R·∇w' L_val(w'),
    R = 0.01 / ‖∇w' L_val(w')‖. Weights (and BN statistics) are restored exactly."""

    name = "darts-2nd"

    def arch_step(self, train_batch, val_batch):
        eta = self.w_opt.param_groups[0]["lr"]
        momentum, wd = self.config.w_momentum, self.config.w_weight_decay
        saved_w = [w.detach().clone() for w in self.weights]
        # BatchNorm statistics (not α's masks, which the virtual step leaves alone: rewriting them would
        # make the next forward read them from the device again).
        arch_buffers = {id(b) for b in self.model.arch.buffers()}
        buffers = [b for b in self.model.buffers() if id(b) not in arch_buffers]
        saved_buffers = [b.detach().clone() for b in buffers]

        # Virtual step w' = w − η(momentum·buffer + ∇w L_train + wd·w).
        loss, _ = self.loss(train_batch, "weights")
        g_train = torch.autograd.grad(loss, self.weights, allow_unused=True)
        with torch.no_grad():
            for w, g in zip(self.weights, g_train):
                buf = self.w_opt.state.get(w, {}).get("momentum_buffer")
                step = (0 if g is None else g) + wd * w
                if buf is not None:
                    step = step + momentum * buf
                w.sub_(eta * step)

        # ∇α and ∇w' of L_val at w'.
        loss, _ = self.loss(val_batch, "alpha")
        grads = torch.autograd.grad(loss, self.alphas + self.weights, allow_unused=True)
        g_alpha = [_zero_if_none(g, a) for g, a in zip(grads[:len(self.alphas)], self.alphas)]
        v = [_zero_if_none(g, w) for g, w in zip(grads[len(self.alphas):], self.weights)]
        R = 0.01 / _global_norm(v)  # a 0-d tensor: no host synchronisation

        def alpha_grad_at(sign):
            with torch.no_grad():
                for w, w0, vi in zip(self.weights, saved_w, v):
                    w.copy_(w0 + (sign * R).to(vi.dtype) * vi)
            loss, _ = self.loss(train_batch, "weights")
            return [_zero_if_none(g, a) for g, a in
                    zip(torch.autograd.grad(loss, self.alphas, allow_unused=True), self.alphas)]

        g_pos, g_neg = alpha_grad_at(+1), alpha_grad_at(-1)
        with torch.no_grad():
            for w, w0 in zip(self.weights, saved_w):
                w.copy_(w0)
            for b, b0 in zip(buffers, saved_buffers):
                b.copy_(b0)
        self.a_opt.zero_grad(set_to_none=True)
        for a, ga, gp, gn in zip(self.alphas, g_alpha, g_pos, g_neg):
            a.grad = ga - eta * (gp - gn) / (2 * R).to(ga.dtype)
        self.sync(self.alphas)
        self.arch_optimizer_step()


class SingleLevel(Strategy):
    """Single-DARTS (and SNAS, DSNAS): weights and α from the identical batch of
    the training set, one backward pass, both optimisers step."""

    name = "single-level"
    bilevel = False

    def step_body(self, train_batch, val_batch, alpha_trains):
        self.w_opt.zero_grad(set_to_none=True)
        if self.a_opt is not None:
            self.a_opt.zero_grad(set_to_none=True)
        loss, logits = self.loss(train_batch, "both")
        reduction = self.weight_reduction()
        with reduction.collecting() if reduction else contextlib.nullcontext():
            loss.backward()
        if reduction is not None:
            for w, g in zip(self.weights, reduction.averaged()):
                w.grad = g
        self.sync(self.alphas if reduction else self.weights + self.alphas)
        nn.utils.clip_grad_norm_(self.weights, self.config.grad_clip)
        self.w_opt.step()
        if alpha_trains:
            self.arch_optimizer_step()
        return _metrics(loss, logits, train_batch[1])


class Snas(SingleLevel):
    """SNAS: single-level with soft Gumbel samples (the relaxation of the
    model's ``arch``) and, optionally, the resource constraint λ·E_Z[C(Z)] as a
    term of the objective (:class:`~pynas.search.parts.ResourceCost`)."""

    name = "snas"

    def __init__(self, model, config, steps_per_epoch, loss_fn=F.cross_entropy, constraint=None,
                 image_size: Optional[int] = None, **parts):
        terms = list(parts.pop("terms", ()))
        self.cost = None
        if constraint is not None:
            if image_size is None:
                raise ValueError("Snas: a resource constraint needs `image_size`")
            self.cost = ResourceCost(constraint, model, image_size)
            terms.append(self.cost)
        super().__init__(model, config, steps_per_epoch, loss_fn, terms=terms, **parts)

    @property
    def tables(self):
        return self.cost.tables

    @property
    def last_cost(self) -> float:
        """The penalty of the last step's loss (read from the device on request)."""
        return float(self.last_terms.get(ResourceCost.name, 0.0))


class FixedAlpha(Strategy):
    """α frozen (uniform): trains the supernet alone, for perturbation-based
    selection with fixed α (DARTS-PT Sec. 6.3)."""

    name = "fixed"
    bilevel = False

    def __init__(self, model, config, steps_per_epoch, loss_fn=F.cross_entropy, **parts):
        for a in model.arch_parameters():
            a.requires_grad_(False)
            with torch.no_grad():
                a.zero_()
        super().__init__(model, config, steps_per_epoch, loss_fn, **parts)
        self.alphas, self.a_opt = [], None


class Sgas(DartsFirstOrder):
    """SGAS, Criterion 1 (Li et al. 2020; DARTS-PT App. A.1.3), as its public code
    runs it: the DARTS first-order search (α trains from the first epoch unless
    ``warmup_epochs``, by default the config's, train the weights alone) in which, after ``first_decision``
    epochs and then every ``decision_freq`` epochs, one undecided edge per cell
    type is decided: the edge with the best score (edge importance × selection
    certainty, each min-max normalised over all edges of the cell) keeps one
    operation (its largest non-``none`` α, or ``choose_op``'s choice, e.g.
    perturbation-based for SGAS+PT); a node with two decided edges loses its other
    inputs. The search space shrinks until every node has two."""

    name = "sgas"

    def __init__(self, model, config, steps_per_epoch, loss_fn=F.cross_entropy, warmup_epochs: Optional[int] = None,
                 first_decision: int = 10, decision_freq: int = 5,
                 choose_op: Optional[Callable[[str, int], int]] = None, inputs: int = 2, **parts):
        super().__init__(model, config, steps_per_epoch, loss_fn, **parts)
        warmup_epochs = self.warmup_epochs if warmup_epochs is None else warmup_epochs
        if warmup_epochs < 0:
            raise ValueError(f"--warmup-epochs must be non-negative, got {warmup_epochs}")
        if decision_freq < 1:
            raise ValueError(f"--decision-freq must be at least 1, got {decision_freq}")
        if first_decision < max(warmup_epochs, 0):
            raise ValueError(f"--first-decision must be >= --warmup-epochs, got {first_decision} < {warmup_epochs}")
        arch = model.arch
        if "none" not in arch.ops:
            raise ValueError("sgas: its edge importance needs a space with the `none` operation")
        self.warmup_epochs, self.first_decision, self.decision_freq = warmup_epochs, first_decision, decision_freq
        self.choose_op = choose_op
        self.groups = node_edge_groups(arch.num_edges, inputs)
        self.decisions: List[Dict] = []
        self.last_decisions: List[Dict] = []  # those of the last epoch_end

    def alpha_trains(self):
        decided = not any(self.undecided_edges(t) for t in self.model.arch.cell_types)
        return super().alpha_trains() and not decided  # a fully decided search leaves α nothing to learn

    def epoch_end(self):
        super().epoch_end()
        after = self.epochs_done - self.first_decision
        # SGAS' code: decisions after epochs 10, 15, ..., 45 of its 50 (8 per cell type).
        decide = after >= 0 and after % self.decision_freq == 0
        self.last_decisions = self.decide() if decide else []

    def arch_optimizer_step(self):
        # SGAS' code stops training the α of decided and pruned edges (no step, no weight decay):
        # their values stay as they were at the decision and still enter later scores' normalisation.
        arch = self.model.arch
        frozen = {t: [e for e, n in enumerate(self._ops_per_edge(t)) if n <= 1] for t in arch.cell_types}
        kept = {t: arch.alphas[t].detach()[rows].clone() for t, rows in frozen.items() if rows}
        super().arch_optimizer_step()
        with torch.no_grad():
            for t, values in kept.items():
                arch.alphas[t][frozen[t]] = values

    def decision_rounds(self) -> int:
        """How many epochs have ended with decisions (SGAS grows the batch after each)."""
        return len({d["epoch"] for d in self.decisions})

    # -- decisions --------------------------------------------------------------
    def undecided_edges(self, cell_type: str) -> List[int]:
        """Edges still mixing several operations (not decided, not pruned)."""
        return [e for e, n in enumerate(self._ops_per_edge(cell_type)) if n > 1]

    def _ops_per_edge(self, cell_type: str) -> List[int]:
        # From the architecture's host copy of the mask: no device read while the mask is unchanged.
        arch = self.model.arch
        active = arch.active(cell_type)
        return [len(arch.ops)] * arch.num_edges if active is None else [len(row) for row in active]

    def decide(self) -> List[Dict]:
        """One decision per cell type (none once a cell is fully decided)."""
        made = []
        for cell_type in self.model.arch.cell_types:
            undecided = self.undecided_edges(cell_type)
            if not undecided:
                continue
            # As SGAS' code: scores from softmax(α) of every edge of the cell, decided and pruned ones
            # included (their α as it stands), min-max normalised over them all; chosen among the undecided.
            arch = self.model.arch
            available = arch.space.available(cell_type, arch.num_edges).to(arch.alphas[cell_type].device)
            scores = sgas_scores(arch.alphas[cell_type].detach(), available,
                                 arch.ops.index("none"), list(range(arch.num_edges)))
            edge = max(undecided, key=lambda e: scores[e])
            made.append(self._decide_edge(cell_type, edge, scores[edge]))
        self.decisions += made
        return made

    def decide_all(self) -> List[Dict]:
        """Decisions until every cell is decided (a search that ended early)."""
        made = []
        while any(self.undecided_edges(t) for t in self.model.arch.cell_types):
            made += self.decide()
        return made

    def _decide_edge(self, cell_type, edge, score):
        arch = self.model.arch
        if self.choose_op is not None:
            op = self.choose_op(cell_type, edge)
        else:
            alpha = arch.alphas[cell_type][edge].detach().masked_fill(~arch.mask(cell_type)[edge], float("-inf"))
            alpha[arch.ops.index("none")] = float("-inf")
            op = int(alpha.argmax())
        arch.fix_op(cell_type, edge, op)
        pruned = []
        for rows in self.groups:
            if edge in rows:
                mask = arch.mask(cell_type)
                decided = [e for e in rows if int(mask[e].sum()) == 1]
                if len(decided) >= 2:
                    pruned = [e for e in rows if e not in decided and bool(mask[e].any())]
                    for e in pruned:
                        arch.remove_edge(cell_type, e)
        return {"epoch": self.epochs_done, "cell_type": cell_type, "edge": edge, "score": score,
                "op": arch.ops[op], "pruned": pruned}

    def state_dict(self):
        return dict(super().state_dict(), decisions=json.dumps(self.decisions))

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.decisions = json.loads(state["decisions"])


def node_edge_groups(num_edges: int, inputs: int = 2) -> List[List[int]]:
    """Per intermediate node, the α rows of its incoming edges."""
    groups, row, n = [], 0, inputs
    while row < num_edges:
        groups.append(list(range(row, row + n)))
        row, n = row + n, n + 1
    if row != num_edges:
        raise ValueError(f"{num_edges} edges do not form a cell with {inputs} inputs")
    return groups


def sgas_scores(alpha: torch.Tensor, mask: torch.Tensor, none: int, edges: List[int]) -> Dict[int, float]:
    """SGAS Criterion 1 over ``edges``: edge importance (the non-``none`` softmax
    mass) times selection certainty (1 − the normalised entropy of the
    non-``none`` distribution), each min-max normalised across ``edges``."""
    p = alpha.double().masked_fill(~mask, float("-inf")).softmax(-1)[edges]
    keep = torch.ones(alpha.size(-1), dtype=torch.bool)
    keep[none] = False
    keep = keep & mask[edges].cpu()  # per edge: its available non-`none` operations
    importance = (p * keep).sum(-1)
    q = (p * keep) / importance.clamp_min(1e-300).unsqueeze(-1)
    entropy = -(q * q.clamp_min(1e-300).log()).sum(-1)
    n_ops = keep.sum(-1).double()
    certainty = 1 - entropy / n_ops.log().clamp_min(1e-300)
    certainty = torch.where(n_ops > 1, certainty, torch.ones_like(certainty))

    def normalise(v):
        span = v.max() - v.min()
        return (v - v.min()) / span if span > 0 else torch.zeros_like(v)

    score = normalise(importance) * normalise(certainty)
    return {e: float(score[i]) for i, e in enumerate(edges)}


def _world_size() -> int:
    """Processes of the default group (1 without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def _zero_if_none(g, like):
    return torch.zeros_like(like) if g is None else g


def _metrics(loss, logits, y) -> Dict[str, torch.Tensor]:
    """Loss and accuracy of a step as 0-d tensors on the device: no host synchronisation."""
    y = y.to(logits.device, non_blocking=True)
    return {"loss": loss.detach(), "acc": (logits.detach().argmax(-1) == y).float().mean()}
