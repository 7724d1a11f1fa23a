"""One FF layer with everything it needs to learn on its own: optimizer, threshold,
learning-rate schedule, peer normalization, version counter and checkpoint state.

This is the unit every schedule shares: lockstep and sequential hold a list of them in
one process; the pipelined runtime gives each stage process exactly one.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from pipeline import precision
from pipeline.config import RunConfig
from pipeline.errors import ConfigError
from pipeline.ff import FFLayer, goodness, normalize, normalize_known
from pipeline.ff_grad import StepGrads, layer_step_grads
from pipeline.optimizers import SGD, Adam
from pipeline import step_graph


log = logging.getLogger(__name__)

LAYER_INIT = 1  # SeedSequence spawn key of layer initialisation (batches use the entropy)
LAYER_DROPOUT = 2  # ... and of a layer's dropout masks
FP16_SCALE = (2.0 ** 12, 2.0 ** 16, 1000)  # fp16 loss scale: start, cap, good steps to double


def make_optimizer(params, train_cfg, lr: float | None = None) -> torch.optim.Optimizer:
    """Adam or SGD with momentum: torch's, without the ~2 s import of torch._dynamo its
    first call would cost every stage process (`pipeline.optimizers`). The fused kernels
    (one pass over the parameters instead of one op per term) measured ~3.7x faster for
    Adam on a 1000x1000 layer on one CPU thread; fall back to the plain ones where a
    build lacks them."""
    lr = train_cfg.lr if lr is None else lr
    params = list(params)
    if train_cfg.optimizer == "sgd":
        kw = dict(lr=lr, momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay)
        cls = SGD
    else:
        kw = dict(lr=lr, weight_decay=train_cfg.weight_decay)
        cls = Adam
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, **kw)


def lr_gain(schedule: str, progress: float) -> float:
    """Multiplier on the base learning rate at `progress` in [0, 1] of training.

    linear-decay: 1 for the first half, then linearly down to ~0 at the end, as in
    Hinton's FF code (which uses (1 + 2 * (E - e)) / E per epoch).
    """
    if schedule == "constant" or progress < 0.5:
        return 1.0
    return max(2.0 * (1.0 - progress), 0.01)


def layer_seed(seed: int, index: int, key: int = LAYER_INIT) -> int:
    """The seed of layer `index`'s initial weights (or, with `key`, of its dropout masks): a
    function of the run's seed and the layer alone, so every schedule (and a stage in its
    own process) starts each layer from the same weights and draws the same masks."""
    return int(np.random.SeedSequence(seed, spawn_key=(key, index)).generate_state(1)[0])


@torch.no_grad()
def _sum_sq_finite(tensors: list[torch.Tensor]) -> bool:
    """Each tensor's sum of squares is finite: no NaN or Inf in any, and no entry whose
    square overflows (Adam keeps squared gradients). One BLAS dot each, one host sync:
    ~30x cheaper than `isfinite(t).all()` on a 1000x1000 float32 CPU tensor."""
    if not tensors:
        return True
    sq = torch.stack([torch.dot(t.reshape(-1), t.reshape(-1)) for t in tensors])
    return bool(torch.isfinite(sq).all())


FLOAT32_MAX = torch.finfo(torch.float32).max
WEIGHT_CHECK_EVERY = 32  # steps between the (redundant, bug-catching) weight checks


@torch.no_grad()
def _grads_finite(s: StepGrads) -> bool:
    """`_sum_sq_finite` of both gradients, mostly without reading grad_w: if the bound on
    its entries keeps their summed squares finite, the exact sum is finite too, and only
    the small bias gradient is summed (a 1000x1000 layer: ~30x less memory read); past the
    bound, the exact check decides."""
    bound, b_sq = torch.stack([s.grad_w_bound.float(), torch.dot(s.grad_b, s.grad_b)]).tolist()
    if math.isfinite(b_sq) and bound * bound * s.grad_w.numel() < FLOAT32_MAX:
        return True
    return _sum_sq_finite([s.grad_w, s.grad_b])


@torch.no_grad()
def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """No NaN or Inf in any tensor (min and max propagate NaN): exact, one host sync."""
    ends = torch.stack([e for t in tensors for e in torch.aminmax(t)])
    return bool(torch.isfinite(ends).all())


class LayerTrainer:
    def __init__(self, index: int, cfg: RunConfig, device: str = "cpu"):
        m = cfg.model
        self.index = index
        self.cfg = cfg
        self.device = torch.device(device)
        self.d_in, self.d_out = m.layers[index], m.layers[index + 1]
        self.dtype = precision.resolve(cfg.train.precision, self.device)
        with torch.random.fork_rng(devices=[]):  # leaves the caller's generator alone
            torch.manual_seed(layer_seed(cfg.train.seed, index))
            self.layer = FFLayer(self.d_in, self.d_out, m.normalization, self.dtype)
        self.layer.to(self.device)
        self.opt = make_optimizer(self.layer.parameters(), cfg.train)
        self.theta = cfg.thresholds()[index]
        self.alpha = cfg.train.symba_alpha or 4.0 / self.theta
        self.wire_dtype = getattr(torch, cfg.pipeline.wire_dtype)
        # float16 gradients of a mean loss underflow: scale the loss up, the gradients
        # back down, and halve the scale whenever a step overflows (as torch's GradScaler).
        self.loss_scale = FP16_SCALE[0] if self.dtype == torch.float16 else 1.0
        self._good_steps = 0
        self.version = 0           # number of optimizer steps taken: stamped downstream
        self.skipped_steps = 0     # steps not taken: non-finite loss or gradients
        self.peer_mean = torch.zeros(self.d_out, device=self.device)
        self.dropout_gen = torch.Generator(device=self.device)
        self.dropout_gen.manual_seed(layer_seed(cfg.train.seed, index, LAYER_DROPOUT))
        self.use_graph = step_graph.wanted(cfg.train, self.device)
        self.graph: step_graph.StepGraph | None = None  # built at the first full batch

    def set_progress(self, progress: float) -> None:
        lr = self.cfg.train.lr * lr_gain(self.cfg.train.lr_schedule, progress)
        for group in self.opt.param_groups:
            if isinstance(group["lr"], torch.Tensor):  # a step graph's: read on the device
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        return lr

    def train_step(self, pos: torch.Tensor, neg: torch.Tensor, progress: float):
        """One optimizer step on (pos, neg); returns normalized detached outputs + stats.

        The gradients are written out in closed form (`ff_grad`): two GEMMs over
        [pos; neg] in the compute dtype, no autograd graph. A step whose loss or gradients
        are not finite (extreme but finite inputs can overflow them) is not taken and is
        counted in `skipped_steps`: parameters, optimizer state, peer mean and version stay
        as they were; the stats report the loss as computed (nan or inf). With a step
        graph (`step_graph`, CUDA by default) full batches take the same step as one
        replayed graph."""
        lr = self.set_progress(progress)
        if self.use_graph:
            if self.graph is None and len(pos) == self.cfg.train.batch_size:
                self.graph = step_graph.StepGraph(self, pos, neg)
            if self.graph is not None and self.graph.fits(pos, neg):
                try:
                    return self._graph_step(pos, neg, lr)
                except step_graph.CaptureFailed as e:
                    log.warning("layer %d: the train step could not be captured as a CUDA "
                                "graph (%s); it steps eagerly (--train.step_graph off "
                                "skips the attempt)", self.index, e)
                    self.graph.release(lr)
                    self.graph, self.use_graph = None, False
        s = self.grads(pos, neg)
        loss_value = s.loss.item()
        if self._step_if_finite(s, loss_value):
            self.version += 1
            if s.peer_mean is not None:
                self.peer_mean.copy_(s.peer_mean)  # in place: a step graph reads it
        else:
            self.skipped_steps += 1
        stats = {"loss": loss_value, "g_pos": s.g_pos.mean().item(),
                 "g_neg": s.g_neg.mean().item()}
        B = len(pos)
        return self.output(s.h[:B], s.norms[:B]), self.output(s.h[B:], s.norms[B:]), stats

    def grads(self, pos: torch.Tensor, neg: torch.Tensor) -> StepGrads:
        """This layer's loss and gradients on (pos, neg) (`ff_grad`); nothing changes."""
        lin, train = self.layer.linear, self.cfg.train
        return layer_step_grads(lin.weight, lin.bias, pos, neg,
                                normalization=self.cfg.model.normalization,
                                compute_dtype=self.layer.compute_dtype,
                                goodness=self.cfg.model.goodness, loss=train.loss,
                                theta=self.theta, alpha=self.alpha,
                                peer_lambda=train.peer_lambda, peer_mean=self.peer_mean,
                                grad_scale=self.loss_scale, dropout=train.dropout,
                                generator=self.dropout_gen)

    def _graph_step(self, pos: torch.Tensor, neg: torch.Tensor, lr: float):
        out_pos, out_neg, stats, taken = self.graph.step(pos, neg)
        if taken:
            self._check_weights(lr)
            self.version += 1
        else:
            self.skipped_steps += 1
        return out_pos, out_neg, stats

    def _check_weights(self, lr) -> None:
        # Finite weights and gradients with finite squares give finite weights (Adam's
        # update is at most a few lr; SGD's a bounded multiple of the gradients): the
        # check below verifies it every few steps, it never has anything to repair.
        lin = self.layer.linear
        if self.version % WEIGHT_CHECK_EVERY == 0 and not _all_finite([lin.weight, lin.bias]):
            raise FloatingPointError(
                f"layer {self.index}: non-finite weights after a step with finite loss and "
                f"gradients (lr {float(lr):g}); this is a bug")

    def _step_if_finite(self, s: StepGrads, loss_value: float) -> bool:
        """The optimizer step on `s`'s gradients unless the loss or a gradient is
        non-finite (or so large that its square, which Adam keeps, would overflow):
        checks, not copies, so a skipped step leaves nothing to restore."""
        lin = self.layer.linear
        lin.weight.grad, lin.bias.grad = None, None
        if not math.isfinite(loss_value):
            return False
        grads = [s.grad_w, s.grad_b]
        if not _grads_finite(s):
            self._rescale(overflow=True)
            return False
        if self.loss_scale != 1.0:
            torch._foreach_div_(grads, self.loss_scale)
            self._rescale(overflow=False)
        lin.weight.grad, lin.bias.grad = grads
        self.opt.step()
        self._check_weights(self.opt.param_groups[0]["lr"])
        return True

    def _rescale(self, overflow: bool) -> None:
        if self.dtype != torch.float16:
            return
        start, cap, every = FP16_SCALE
        if overflow:
            self.loss_scale, self._good_steps = max(self.loss_scale / 2, 1.0), 0
            return
        self._good_steps += 1
        if self._good_steps >= every:
            self.loss_scale, self._good_steps = min(self.loss_scale * 2, cap), 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def output(self, h: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        """What this layer sends on: its activity, normalized, in the wire dtype (`forward`
        and `train_step` already give detached activities; the step also passes the row
        norms it has from the goodness). Every schedule rounds here, so lockstep stays the
        pipeline's exact twin with a bfloat16 wire too."""
        mode = self.cfg.model.normalization
        out = normalize(h, mode) if norms is None else normalize_known(h, norms, mode)
        return out.to(self.wire_dtype)

    def goodness(self, h: torch.Tensor) -> torch.Tensor:
        return goodness(h, self.cfg.model.goodness)

    def state_dict(self) -> dict:
        opt = self.opt.state_dict()
        for group in opt["param_groups"]:  # as an eager step keeps them (a graph's: tensors)
            group["lr"], group["capturable"] = float(group["lr"]), False
        return {"layer": self.layer.state_dict(), "opt": opt,
                "version": self.version, "peer_mean": self.peer_mean.cpu(),
                "loss_scale": self.loss_scale, "dropout_rng": self.dropout_gen.get_state(),
                "index": self.index, "shape": [self.d_in, self.d_out]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("shape") != [self.d_in, self.d_out]:
            raise ConfigError(f"checkpoint is for a layer of shape {state.get('shape')}, "
                              f"this layer is {[self.d_in, self.d_out]}; resume with the "
                              f"--layers of the run that wrote it")
        self.graph = None  # new optimizer state and peer mean: a graph is captured anew
        self.layer.load_state_dict(state["layer"])
        self.opt.load_state_dict(state["opt"])
        self.version = int(state["version"])
        self.peer_mean = state["peer_mean"].to(self.device, copy=True)  # stepped in place
        self.loss_scale = float(state.get("loss_scale", self.loss_scale))
        if "dropout_rng" in state:
            self.dropout_gen.set_state(state["dropout_rng"])
