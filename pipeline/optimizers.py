"""torch's Adam and SGD, run without importing `torch._dynamo` (~2 s of CPU per process).

`torch.optim.Optimizer` wraps `add_param_group`, `zero_grad`, `state_dict` and
`load_state_dict` in `torch._disable_dynamo`, and `Adam.step` / `SGD.step` in
`_use_grad_for_differentiable`; each wrapper imports `torch._dynamo` on its first call.
Measured on this project's 2-core machine with torch 2.13: that import is ~2 s of CPU,
paid by every stage process while it builds its optimizer, before its first step.

Both wrappers only matter while dynamo traces the call (they keep the optimizer out of a
compiled graph, or break the graph around it), and nothing can be traced before
`torch._dynamo` is imported. So while it is not imported, these subclasses call the very
same methods without the wrappers: the same code runs, the results are bit for bit
those of torch.optim (`tests/unit/test_optimizers.py`). As soon as anything has imported
dynamo (`torch.compile`, say), they call torch's wrapped methods, exactly as torch.optim
does. Only wrappers recognised by their code object are skipped: on a torch whose
wrappers look different, these classes behave like torch.optim and pay the import.
"""

from __future__ import annotations

import sys

import torch
from torch.optim import optimizer as _optimizer

# The code objects of the two wrappers, taken from wrappers made here: a method wrapped
# by anything else is never bypassed.
_DISABLE_DYNAMO_CODE = torch._disable_dynamo(lambda: None).__code__
_USE_GRAD_CODE = _optimizer._use_grad_for_differentiable(lambda self: None).__code__


def dynamo_imported() -> bool:
    return "torch._dynamo" in sys.modules


def _unwrapped(method, wrapper_code):
    """`method` without the one known wrapper (None if it is not wrapped exactly so)."""
    inner = getattr(method, "__wrapped__", None)
    return inner if inner is not None and method.__code__ is wrapper_code else None


def _unhooked_step(cls):
    """cls.step without torch's step-hook wrapper (`profile_hook_step`, which torch puts
    on a class's step when its first instance is made; our subclass gets its own, so the
    hooks run once)."""
    step = cls.step
    return step.__wrapped__ if getattr(step, "hooked", False) else step


class _WithoutDynamoImport:
    """Mixin before a torch.optim class: its methods without the dynamo wrappers while
    torch._dynamo is not imported."""

    _base: type[torch.optim.Optimizer]
    _raw: dict

    def __init_subclass__(cls, base: type[torch.optim.Optimizer], **kw):
        super().__init_subclass__(**kw)
        cls._base = base
        # from `base`: a method it overrides without the known wrapper is never skipped
        cls._raw = {name: _unwrapped(getattr(base, name), _DISABLE_DYNAMO_CODE)
                    for name in ("add_param_group", "zero_grad", "state_dict",
                                 "load_state_dict")}
        cls._raw["step"] = _unwrapped(_unhooked_step(base), _USE_GRAD_CODE)

    def _call(self, name: str, *args, **kwargs):
        raw = self._raw[name]
        if raw is None or dynamo_imported():
            return getattr(self._base, name)(self, *args, **kwargs)
        return raw(self, *args, **kwargs)

    def add_param_group(self, param_group):
        return self._call("add_param_group", param_group)

    def zero_grad(self, set_to_none: bool = True):
        return self._call("zero_grad", set_to_none)

    def state_dict(self):
        return self._call("state_dict")

    def load_state_dict(self, state_dict):
        return self._call("load_state_dict", state_dict)

    def step(self, closure=None):
        raw = self._raw["step"]
        if raw is None or dynamo_imported():
            return _unhooked_step(self._base)(self, closure)
        # what `_use_grad_for_differentiable` does outside dynamo: the step runs with
        # autograd on only for a differentiable optimizer
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return raw(self, closure)


class Adam(_WithoutDynamoImport, torch.optim.Adam, base=torch.optim.Adam):
    pass


class SGD(_WithoutDynamoImport, torch.optim.SGD, base=torch.optim.SGD):
    pass
