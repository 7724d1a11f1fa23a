"""A layer's train step as one replayable graph: on CUDA, one CUDA-graph launch per step.

On a GPU an FF step is a few dozen small kernels (two GEMMs, norms, the loss, the
finite check, the fused Adam update, the outgoing normalization) each launched from
Python; at batch 100 the launches, not the arithmetic, set the pace. A CUDA graph
records those launches once and replays them with one call. What a graph needs, and
what this module provides:

- static buffers: every step copies its batch into the same input tensors and finds its
  outputs in the same output tensors (the caller gets copies);
- no decision on the host inside the step: the eager step (`LayerTrainer.train_step`)
  reads the loss and decides on the host whether the gradients are finite before it
  steps; here that decision is a device tensor handed to the fused Adam kernel as its
  `found_inf` (the same mechanism torch's GradScaler uses), which then leaves weights,
  moments and step count untouched, and the peer-normalization mean is kept with a
  `where`. One read of four numbers after the replay (loss, goodness of both halves,
  skipped) is the step's only synchronisation;
- the learning rate in a device tensor (`capturable` Adam), which
  `LayerTrainer.set_progress` writes before each step.

The arithmetic is the eager step's (`ff_grad.layer_step_grads`); the finite check is the
exact one (sums of squares of both gradients) that the eager step falls back to.
Elsewhere than CUDA the same static-buffer step runs eagerly each time (`--train.step_graph
on`): that is how the tests compare it with the eager step on a CPU. Batches of another
size or dtype (a last partial batch, a replay mix) take the eager step.
"""

from __future__ import annotations

import torch

from pipeline.config import step_graph_unsupported

WARMUP_STEPS = 2  # eager steps (side stream) before capture: the optimizer's state exists


def wanted(train_cfg, device: torch.device) -> bool:
    """Whether a layer steps through a `StepGraph`: `on` everywhere, `auto` on CUDA, never
    where `config.step_graph_unsupported` (`config.validate` refuses `on` there)."""
    mode = train_cfg.step_graph
    if mode == "off" or step_graph_unsupported(train_cfg):
        return False
    return mode == "on" or device.type == "cuda"


class CaptureFailed(RuntimeError):
    """The step could not be recorded as a CUDA graph (the layer then steps eagerly)."""


class StepGraph:
    def __init__(self, trainer, pos: torch.Tensor, neg: torch.Tensor):
        self.tr = trainer
        dev = trainer.device
        self.pos, self.neg = torch.empty_like(pos), torch.empty_like(neg)
        self.found_inf = torch.zeros((), device=dev)
        self.stats = torch.zeros(4, device=dev)  # loss, mean g_pos, mean g_neg, skipped
        B, d_out = len(pos), trainer.d_out
        self.out_pos = torch.empty((B, d_out), dtype=trainer.wire_dtype, device=dev)
        self.out_neg = torch.empty_like(self.out_pos)
        for group in trainer.opt.param_groups:  # Adam reads lr from the device each step
            group["capturable"] = True
            group["lr"] = torch.tensor(float(group["lr"]), device=dev)
        self.cuda = dev.type == "cuda"
        self.graph = None
        self.eager_runs = 0

    def release(self, lr: float) -> None:
        """Back to the eager step's optimizer settings (float lr, not capturable)."""
        for group in self.tr.opt.param_groups:
            group["capturable"], group["lr"] = False, lr
        self.graph = None

    def fits(self, pos: torch.Tensor, neg: torch.Tensor) -> bool:
        return (pos.shape == self.pos.shape and neg.shape == self.neg.shape
                and pos.dtype == self.pos.dtype and neg.dtype == self.neg.dtype)

    def _body(self) -> None:
        tr = self.tr
        lin = tr.layer.linear
        s = tr.grads(self.pos, self.neg)  # loss scale 1 and no dropout: see `wanted`
        checks = torch.stack([s.loss.float(), torch.dot(s.grad_w.view(-1), s.grad_w.view(-1)),
                              torch.dot(s.grad_b, s.grad_b)])
        torch.logical_not(torch.isfinite(checks).all(), out=self.found_inf)
        lin.weight.grad, lin.bias.grad = s.grad_w, s.grad_b
        tr.opt.found_inf = self.found_inf
        try:
            tr.opt.step()
        finally:
            tr.opt.found_inf = None
        if s.peer_mean is not None:
            tr.peer_mean.copy_(torch.where(self.found_inf > 0, tr.peer_mean, s.peer_mean))
        B = len(self.pos)
        self.out_pos.copy_(tr.output(s.h[:B], s.norms[:B]))
        self.out_neg.copy_(tr.output(s.h[B:], s.norms[B:]))
        torch.stack([s.loss.float(), s.g_pos.mean(), s.g_neg.mean(), self.found_inf],
                    out=self.stats)

    def _run(self) -> None:
        if not self.cuda:
            self._body()
            return
        if self.graph is not None:
            self.graph.replay()
            return
        if self.eager_runs < WARMUP_STEPS:  # warm-up on a side stream, as capture wants
            side = torch.cuda.Stream(self.tr.device)
            side.wait_stream(torch.cuda.current_stream(self.tr.device))
            with torch.cuda.stream(side):
                self._body()
            torch.cuda.current_stream(self.tr.device).wait_stream(side)
            self.eager_runs += 1
            return
        graph = torch.cuda.CUDAGraph()
        try:  # records, does not run: replay once for this step
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._body()
        except RuntimeError as e:  # nothing ran: the caller takes this step eagerly
            raise CaptureFailed(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
        self.graph = graph
        graph.replay()

    def step(self, pos: torch.Tensor, neg: torch.Tensor):
        """One train step on (pos, neg) at the lr `LayerTrainer.set_progress` wrote into the
        device tensor: returns copies of the outputs, the stats and whether the step was
        taken."""
        self.pos.copy_(pos, non_blocking=True)
        self.neg.copy_(neg, non_blocking=True)
        self._run()
        loss, g_pos, g_neg, skipped = self.stats.tolist()
        return (self.out_pos.clone(), self.out_neg.clone(),
                {"loss": loss, "g_pos": g_pos, "g_neg": g_neg}, skipped == 0)
