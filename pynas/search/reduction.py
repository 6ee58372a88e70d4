"""Data parallel: the weights' gradients averaged over processes while backward runs.

Each weight gets a gradient hook that copies its gradient, as soon as backward
has it, into its bucket's flat buffer; a bucket whose every gradient has arrived
is all-reduced at once, asynchronously, so the communication of the buckets
backward fills first (the last layers') overlaps the backward of the earlier
layers, as DistributedDataParallel does. Buckets follow the parameters in
reverse order, the order backward produces their gradients.

Why not DDP itself: its reducer averages every ``backward()`` through the wrapped
module, but a search step differentiates the same weights several times and only
the weight step's gradients are averaged (DARTS' second order differentiates w',
w+ and w- locally for its virtual step; the α step differentiates the weights'
side too). The hooks here act only inside :meth:`OverlappedReduction.collecting`,
which the weight step opens around its own backward.

Every rank launches the same buckets in the same order: the ranks draw the same
samples, so their backward graphs, and the order the gradients arrive in, agree;
gradients that never arrive (operations a hard sample skipped on every rank) are
zeros, and their buckets are launched after backward in bucket order.
"""
import contextlib
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

# Gradients averaged after backward go in flat buckets of at most this many bytes (DDP's default
# size): a handful of all_reduce calls a step instead of one per parameter (~900 for DARTS' supernet).
BUCKET_BYTES = 25 * 2 ** 20
# Bucket size of the overlapped weight gradients (DDP's first bucket): the DARTS supernet's 7.4 MB of
# weights make 8 buckets, so the reduction of the later cells' gradients runs while backward
# goes through the earlier ones.
OVERLAP_BUCKET_BYTES = 2 ** 20


def gradient_buckets(grads: Sequence[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> List[List[torch.Tensor]]:
    """``grads`` grouped, in order, into buckets of one dtype and device and at
    most ``bucket_bytes`` (a single larger tensor gets a bucket of its own)."""
    buckets, current, size, kind = [], [], 0, None
    for g in grads:
        nbytes = g.numel() * g.element_size()
        if current and ((g.dtype, g.device) != kind or size + nbytes > bucket_bytes):
            buckets.append(current)
            current, size = [], 0
        current.append(g)
        size, kind = size + nbytes, (g.dtype, g.device)
    if current:
        buckets.append(current)
    return buckets


class OverlappedReduction:
    """Averages the gradients of ``params`` over the default process group,
    bucket by bucket while backward runs. Use::

        with reduction.collecting():
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = reduction.averaged()  # one averaged gradient per parameter

    ``launches`` lists, per bucket launched in the last step, how many of all
    the step's gradients had arrived by then (fewer than all: it overlapped)."""

    def __init__(self, params: Sequence[torch.Tensor], bucket_bytes: Optional[int] = None):
        bucket_bytes = bucket_bytes or OVERLAP_BUCKET_BYTES
        self.params = list(params)
        # In reverse order: the order backward produces the gradients.
        index = {id(p): i for i, p in enumerate(self.params)}
        self.buckets: List[List[int]] = [[index[id(p)] for p in bucket] for bucket in
                                         gradient_buckets(self.params[::-1], bucket_bytes)]
        self.slot: Dict[int, tuple] = {}  # parameter -> (bucket, start, numel)
        for b, bucket in enumerate(self.buckets):
            start = 0
            for i in bucket:
                self.slot[i] = (b, start, self.params[i].numel())
                start += self.params[i].numel()
        self.flat = [torch.empty(sum(self.params[i].numel() for i in bucket), dtype=self.params[bucket[0]].dtype,
                                 device=self.params[bucket[0]].device) for bucket in self.buckets]
        self.launches: List[int] = []
        self._active = False
        self._arrived: set = set()
        self._missing: List[int] = []
        self._works: Dict[int, dist.Work] = {}
        for i, p in enumerate(self.params):
            p.register_hook(self._hook(i))

    def _hook(self, i):
        def arrived(grad):
            if self._active:
                b, start, n = self.slot[i]
                with torch.no_grad():
                    self.flat[b][start:start + n].view_as(grad).copy_(grad)
                self._arrived.add(i)
                self._missing[b] -= 1
                if self._missing[b] == 0:
                    self._launch(b)
            return None
        return arrived

    def _launch(self, b):
        self.launches.append(len(self._arrived))
        self._works[b] = dist.all_reduce(self.flat[b], async_op=True)

    @contextlib.contextmanager
    def collecting(self):
        """Within the block, each gradient backward computes for a parameter is
        copied to its bucket, and full buckets are all-reduced."""
        self._arrived, self._works, self.launches = set(), {}, []
        self._missing = [len(bucket) for bucket in self.buckets]
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def averaged(self) -> List[torch.Tensor]:
        """After the backward of :meth:`collecting`: launches the buckets still
        missing gradients (zeros there), waits for every bucket and returns the
        averaged gradient of each parameter (views of the buckets, valid until
        the next step's backward)."""
        for b, bucket in enumerate(self.buckets):
            if b not in self._works:
                for i in bucket:
                    if i not in self._arrived:
                        _, start, n = self.slot[i]
                        self.flat[b][start:start + n].zero_()
                self._launch(b)
        world = dist.get_world_size()
        for b in range(len(self.buckets)):
            self._works[b].wait()
            self.flat[b].div_(world)
        return [self.flat[self.slot[i][0]][self.slot[i][1]:self.slot[i][1] + self.slot[i][2]].view_as(p)
                for i, p in enumerate(self.params)]
