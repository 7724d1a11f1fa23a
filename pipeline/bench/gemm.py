"""The matrix multiplies of an FF train step: how many FLOPs, in which dtype, and how fast
the hardware runs them alone.

One train step of a d_in -> d_out layer on B positives and B negatives (one [2B, d_in]
batch) runs two GEMMs: the forward [2B, d_in] x [d_in, d_out] and the weight gradient
[d_out, 2B] x [2B, d_in], 2 * 2B * d_in * d_out FLOPs each. There is no input-gradient
GEMM: a layer's input is detached. Elementwise work (normalization, goodness, loss, the
optimizer) is not counted. `GemmCensus` checks that count on a real step: it records
every matrix multiply aten runs, with its shapes and dtype, backward included.
"""

from __future__ import annotations

import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
BLOCK_S = 0.05  # each timing block runs about this long: timer and sync costs vanish


def step_gemm_flops(batch: int, d_in: int, d_out: int) -> int:
    """GEMM FLOPs of one train step of a d_in -> d_out layer at `batch` positives (and as
    many negatives): forward + weight gradient, no input gradient."""
    rows = 2 * batch
    return 2 * (2 * rows * d_in * d_out)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, seconds: float, min_blocks: int = 3) -> float:
    """Median seconds per call of `fn`: timed in blocks of ~BLOCK_S until `seconds` have
    passed and at least `min_blocks` blocks were timed (two warm-up calls first)."""
    for _ in range(2):
        fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    per_block = max(1, int(BLOCK_S / max(time.perf_counter() - t0, 1e-9)))
    times, deadline = [], time.perf_counter() + seconds
    while len(times) < min_blocks or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(per_block):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / per_block)
    times.sort()
    return times[len(times) // 2]


def gemm_only_seconds(batch: int, d_in: int, d_out: int, dtype: torch.dtype,
                      device: torch.device, seconds: float) -> float:
    """Seconds of one step's two GEMMs alone, in `dtype`, in the layouts the real step
    uses: the forward is nn.Linear's addmm with the transposed weight, the weight
    gradient grad^T @ input."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, generator=g).to(device=device, dtype=dtype)

    x, w, b, grad = rand(2 * batch, d_in), rand(d_out, d_in), rand(d_out), rand(2 * batch, d_out)

    def step():
        torch.addmm(b, x, w.t())
        torch.mm(grad.t(), x)

    return median_seconds(step, device, seconds)


def gemm_only_rates(shapes: list[tuple[int, int]], batch: int, dtypes: list[str],
                    device: torch.device, seconds: float) -> dict[str, list[float]]:
    """{dtype name: [seconds per step of each (d_in, d_out)]}."""
    return {name: [gemm_only_seconds(batch, d_in, d_out, DTYPES[name], device, seconds)
                   for d_in, d_out in shapes] for name in dtypes}


try:  # not a public module; without it the census is skipped and the counts are analytic
    from torch.utils._python_dispatch import TorchDispatchMode
except ImportError:  # pragma: no cover
    TorchDispatchMode = None

_MM = ("mm", "addmm")


def _gemm_record(func, args) -> tuple[str, int, torch.dtype] | None:
    name = func.overloadpacket.__name__
    if name not in _MM:
        return None
    a, b = (args[0], args[1]) if name == "mm" else (args[1], args[2])
    (m, k), n = a.shape, b.shape[1]
    return name, 2 * m * k * n, a.dtype


if TorchDispatchMode is not None:
    class GemmCensus(TorchDispatchMode):
        """Inside `with GemmCensus() as c:`, `c.gemms` lists (op, FLOPs, dtype) of every
        mm / addmm aten runs (autograd's backward ones too)."""

        def __init__(self):
            super().__init__()
            self.gemms: list[tuple[str, int, torch.dtype]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            rec = _gemm_record(func, args)
            if rec is not None:
                self.gemms.append(rec)
            return func(*args, **(kwargs or {}))
else:  # pragma: no cover
    GemmCensus = None


def census(step) -> list[tuple[str, int, torch.dtype]] | None:
    """The GEMMs `step()` runs (None where the census is not available)."""
    if GemmCensus is None:
        return None
    with GemmCensus() as c:
        step()
    return c.gemms


def main_dtype(gemms) -> torch.dtype | None:
    """The dtype most of the GEMM FLOPs ran in."""
    by_dtype: dict[torch.dtype, int] = {}
    for _, flops, dtype in gemms or ():
        by_dtype[dtype] = by_dtype.get(dtype, 0) + flops
    return max(by_dtype, key=by_dtype.get) if by_dtype else None
