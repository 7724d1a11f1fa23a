"""keep_freed_memory: a stage's steady loop stops page-faulting.

A stage frees and re-allocates the same multi-megabyte blocks every step (its received
input, [pos; neg], activations, gradients). With glibc's defaults many of those come back
as fresh zeroed pages from the kernel; kept in the process, they are reused. Each case
runs in a fresh interpreter, so the allocator starts from glibc's defaults.
"""

import platform
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc knob")]

LOOP = """
import resource, sys, torch
import torch.multiprocessing as mp
from pipeline.runtime.roles import setup_process
if sys.argv[1] == "on":  # what every training process runs first
    setup_process(1)
from pipeline.config import load_config
from pipeline.layer_trainer import LayerTrainer
from pipeline.transport.local import ShmChannel
from pipeline.wire import Message
torch.set_num_threads(1)
tr = LayerTrainer(1, load_config(None, [("model.layers", "784,1000,1000")]))
hop = ShmChannel(mp.get_context("spawn"), slots=2, message_bytes=1 << 20, max_bytes=1 << 24)
x = [torch.rand(100, 1000) for _ in range(4)]
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(60):
    if i == 10:  # the first steps allocate the optimizer state and grow the heap
        start = faults()
    # a stage's loop: the input arrives through a local hop, copied out of its slot
    hop.send(Message("train", tensors={"pos": x[i % 4], "neg": x[(i + 1) % 4]}))
    msg = hop.recv(timeout=5)
    tr.train_step(msg.tensors["pos"], msg.tensors["neg"], 0.1)
    del msg
print(faults() - start)
"""


def steady_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True,
                         text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_a_stage_loop_reuses_freed_memory():
    from pipeline.allocator import keep_freed_memory
    assert keep_freed_memory()  # the knob is there to set on glibc
    kept = steady_faults("on")
    # One step allocates, among others, a fresh float32 weight gradient of 1000 x 1000:
    # served from new pages every time, that alone would fault ~980 pages per step, ~49,000
    # over the 50 measured steps. With the knob the heap still grows now and then (0-1,100
    # pages here). glibc's defaults are not the baseline: its adaptive mmap threshold often
    # settles so that the default loop faults almost nothing after warm-up too (4-5 pages
    # in some runs; 4,700-22,000, most often ~14,500, in others), so only the knob's side
    # is asserted: a default run fails this bound in most runs, the knob's never has.
    fresh = 50 * (1000 * 1000 * 4) // 4096
    assert kept * 10 < fresh, (kept, fresh)
