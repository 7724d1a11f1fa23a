"""The matmul precision of a run: `train.precision` resolved for the device a layer is on.

Only the products run in the lower precision. Weights, optimizer state, normalization
statistics, goodness and loss stay float32 (see `ff.FFLayer`, `ff.goodness`), so the
update is the float32 update of slightly rounded products.

`auto` picks bfloat16 only where the hardware multiplies it fast: a CUDA device with
native bf16 (compute capability 8.0+), or a CPU that advertises AVX512-BF16 / AMX-BF16
(x86) or BF16 (aarch64). Elsewhere bf16 is emulated and slow: on the 2-core AVX2 EPYC
this project is developed on, a 200x1000 @ 1000x1000 product ran at ~6 GFLOP/s in
bfloat16 against ~39 in float32 (one thread), so `auto` means float32 there.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NAMES = {v: k for k, v in DTYPES.items()}
CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


@functools.cache
def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """The CPU's feature flags name a native bf16 dot product (Linux; False elsewhere)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return bool(CPU_BF16_FLAGS & set(line.partition(":")[2].split()))
    return False


def fast_bf16(device: str | torch.device) -> bool:
    dev = torch.device(device)
    if dev.type == "cuda":
        return (torch.cuda.is_available()
                and torch.cuda.get_device_capability(dev) >= (8, 0))
    return dev.type == "cpu" and cpu_has_fast_bf16()


def resolve(precision: str, device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype the layers on `device` multiply in."""
    if precision == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    return DTYPES[precision]


def of_run(cfg) -> str:
    """'fp32', 'bf16' or 'fp16': what a run's train.precision meant where its first layer
    trained (what `summary.json` records as `precision`). The backprop reference always
    trains in float32."""
    if cfg.train.schedule == "backprop":
        return "fp32"
    return name(cfg.train.precision, (cfg.pipeline.devices or [cfg.train.device])[0])


def name(precision: str, device: str | torch.device = "cpu") -> str:
    """'fp32', 'bf16' or 'fp16': what `precision` means on `device` (for logs and summaries)."""
    return NAMES[resolve(precision, device)]
