"""The sections of a run's configuration: every key with its default, help text and
allowed values (`metadata`), one dataclass per `[section]`. `pipeline.config` assembles
them into `RunConfig`, loads and validates it; import them from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.dataset_info import DATASETS

SCHEDULES = ("pipelined", "lockstep", "sequential", "backprop")


def opt(default, help: str, *, choices=None, lo=None, hi=None, each=None):
    """A config field with its help text and validation rule kept beside the default."""
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi, "each": each}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(kw_only=True, slots=True)
class DataConfig:
    dataset: str = opt("mnist-5k", "dataset name", choices=DATASETS)
    data_dir: str = opt("", "folder holding the IDX files for mnist / fashion-mnist")
    train_size: int = opt(4000, "mnist-5k/digits/synthetic: images in the train split", lo=1)
    split_seed: int = opt(0, "seed of the fixed train/test split of mnist-5k, digits, synthetic", lo=0)
    train_limit: int = opt(0, "use only the first N training images (0 = all)", lo=0)
    test_limit: int = opt(0, "use only the first N test images (0 = all)", lo=0)
    augment: str = opt("auto", "training-image augmentation: none, or shift:N (each image "
                               "moved by a random offset in [-N, N]^2, zero fill, fresh every "
                               "epoch; test images are never augmented); auto = shift:1 on "
                               "mnist-5k, mnist and fashion-mnist, none on digits and "
                               "synthetic")


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    layers: list[int] = opt([784, 1000, 1000, 1000], "widths: input, then one per FF layer", lo=1)
    normalization: str = opt("rms", "layer-input normalization", choices=("rms", "length", "none"))
    goodness: str = opt("sum", "goodness of a layer's activity", choices=("sum", "mean"))
    threshold: list[float] = opt(
        [], "per-layer goodness threshold theta; empty = threshold_scale x the layer's width "
            "(sum goodness) or threshold_scale (mean)"
    )
    threshold_scale: float = opt(1.0, "theta of layers without an explicit --model.threshold, "
                                      "per unit: theta = scale x width (sum), scale (mean); "
                                      "Hinton's is 1", lo=0.0)
    label_strength: float = opt(1.0, "value written at the label's position of the overlay", lo=0.0)
    skip_layers: int = opt(1, "first N layers left out of goodness inference (paper: 1)", lo=0)
    head: bool = opt(False, "also train a linear softmax head on normalized activities")


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    schedule: str = opt("pipelined", "how the layers are trained", choices=SCHEDULES)
    epochs: int = opt(200, "passes over the training set (per layer for sequential)", lo=1)
    batch_size: int = opt(100, "positive samples per step (plus as many negatives)", lo=1)
    optimizer: str = opt("adam", "per-layer optimizer", choices=("adam", "sgd"))
    lr: float = opt(1e-3, "learning rate of the FF layers (and backprop)", lo=0.0)
    momentum: float = opt(0.9, "SGD momentum", lo=0.0, hi=1.0)
    weight_decay: float = opt(0.0, "L2 weight decay", lo=0.0)
    lr_schedule: str = opt(
        "linear-decay", "constant, or linear decay to 0 over the second half (Hinton)",
        choices=("constant", "linear-decay"),
    )
    negatives: str = opt("random", "wrong labels for negatives: random (uniform over the "
                                   "wrong ones) or hard (sampled from the model's own label "
                                   "scores)", choices=("random", "hard"))
    hard_refresh_epochs: int = opt(1, "hard negatives, pipelined: epochs over which the source "
                                      "re-scores the whole training set", lo=1)
    peer_lambda: float = opt(1e-5, "peer-normalization strength (0 = off): lambda * sum over "
                                  "units of (running mean activity - its mean)^2, its gradient "
                                  "passed to units that are off too (revives dead units)",
                             lo=0.0)
    dropout: float = opt(0.0, "fraction of each FF layer's normalized input zeroed in a "
                              "train step (inverted dropout, seeded per layer; never at "
                              "inference; backprop trains without it)", lo=0.0, hi=0.95)
    loss: str = opt("ff", "layer loss: ff = softplus(theta - g_pos) + softplus(g_neg - theta); "
                          "symba = softplus(-alpha * (g_pos - g_neg)) (SymBa, pairwise)",
                    choices=("ff", "symba"))
    symba_alpha: float = opt(0.0, "symba: alpha; 0 = 4 / theta (scale-free: theta is the "
                                  "layer's width for sum goodness)", lo=0.0)
    precision: str = opt("auto", "matmul precision of the FF layers (weights, optimizer, "
                                 "goodness and loss stay float32); auto = bf16 where the "
                                 "hardware has fast bf16 matmuls, else fp32",
                         choices=("auto", "fp32", "bf16", "fp16"))
    step_graph: str = opt("auto", "train step as one replayed graph: auto = CUDA graphs on CUDA "
                                  "devices (Adam, bf16/fp32, no dropout); on = also elsewhere, "
                                  "where the same static-buffer step runs eagerly; off = eager",
                          choices=("auto", "on", "off"))
    head_lr: float = opt(1e-3, "learning rate of the softmax head (Adam)", lo=0.0)
    seed: int = opt(0, "seed for init, batches and negatives", lo=0)
    log_every: int = opt(20, "steps between log records", lo=1)
    eval_every: int = opt(500, "steps between test evaluations logged to sink.jsonl "
                             "(0 = only at the end)", lo=0)
    threads: int = opt(0, "torch threads for single-process schedules (0 = torch default)", lo=0)
    device: str = opt("cpu", "device for single-process schedules (cpu, cuda, cuda:N)")


@dataclass(kw_only=True, slots=True)
class PipelineConfig:
    transport: str = opt("local", "how stages talk", choices=("local", "zmq", "dist"))
    devices: list[str] = opt([], "device per stage, e.g. cpu,cpu,cuda:0 (empty = cpu)")
    threads_per_stage: int = opt(1, "torch threads in each stage process", lo=1)
    queue_size: int = opt(4, "messages a channel holds before the sender blocks", lo=1)
    queue_policy: str = opt("block", "block = lossless backpressure; latest = skip to freshest",
                            choices=("block", "latest"))
    eval_batch: int = opt(100, "test images per eval message (x C label overlays)", lo=1)
    ckpt_every: int = opt(0, "stage steps between checkpoints (0 = only at stop)", lo=0)
    resume: str = opt("false", "continue the run in --out from its checkpoints: true, false, "
                               "or auto (continue if there are checkpoints, else start fresh)",
                      choices=("false", "true", "auto"))
    overwrite: bool = opt(False, "clear the files of an earlier run in --out before starting")
    replay: int = opt(0, "per-stage buffer of recent inputs mixed into training (0 = off)", lo=0)
    max_staleness: int = opt(-1, "drop train inputs made by upstream versions more than S "
                                 "updates old (-1 = off)", lo=-1)
    device_hops: str = opt("auto", "local transport, two neighbouring stages on CUDA: auto = "
                                   "their activations stay on the GPU (a device ring shared "
                                   "through CUDA IPC); off = through host shared memory (for "
                                   "containers without a shared IPC namespace)",
                           choices=("auto", "off"))
    wire_dtype: str = opt("float32", "dtype of the activations sent between stages "
                                     "(bfloat16 halves the bytes per hop)",
                          choices=("float32", "bfloat16"))
    max_message_mb: int = opt(256, "largest message a decoder accepts, MiB", lo=1)
    stop_timeout: float = opt(10.0, "seconds children get to exit after stop/Ctrl-C", lo=0.0)
    restarts: int = opt(0, "times each stage process may be restarted alone, from its last "
                           "checkpoint, when it dies (local and zmq launchers; 0 = a dead "
                           "stage stops the run)", lo=0)
    silence_timeout: float = opt(60.0, "seconds a process hears nothing through a stage "
                                       "upstream (stopped by hand, frozen, cut off) before "
                                       "it stops naming it; the sink's stop ends the run "
                                       "(0 = wait forever; not under torchrun)", lo=0.0)

    @property
    def resuming(self) -> bool:
        """Each role continues from its own checkpoint where it has one (`ffpipe train`
        resolves `auto` for the whole run folder before any process starts)."""
        return self.resume != "false"

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb << 20


@dataclass(kw_only=True, slots=True)
class DriftConfig:
    probe_size: int = opt(256, "fixed training images in every probe", lo=2)
    probe_every: int = opt(100, "source steps between probes (0 = off)", lo=0)
    ph_series: str = opt("mmd2_ref", "drift series watched by the Page-Hinkley alarm",
                         choices=("mmd2_ref", "cos_ref", "cos_prev", "mean_shift_ref", "cka_ref"))
    ph_delta: float = opt(0.005, "Page-Hinkley tolerance delta", lo=0.0)
    ph_threshold: float = opt(0.5, "Page-Hinkley alarm threshold lambda", lo=0.0)


@dataclass(kw_only=True, slots=True)
class LogConfig:
    """Mirrors of the records; the JSONL files are always written and stay the source of
    truth (every ffpipe tool reads them)."""
    tensorboard: bool = opt(False, "also mirror every stage and sink record (loss, drift, "
                                   "accuracy) to TensorBoard events in OUT/tensorboard/; "
                                   "needs pip install -e '.[tensorboard]'")


@dataclass(kw_only=True, slots=True)
class NetConfig:
    host: str = opt("127.0.0.1", "address stages bind and connect to (zmq)")
    base_port: int = opt(5600, "zmq: stage k listens on base_port + k + 1, sink last", lo=1,
                         hi=65000)
    ipc_dir: str = opt("", "zmq: use ipc:// sockets in this folder instead of tcp")
    endpoints: list[str] = opt([], "zmq: explicit endpoint per receiver (stage0..K-1, sink)")
    hwm: int = opt(4, "zmq send/receive high-water mark (messages)", lo=1)
    bind_host: str = opt("", "zmq: receivers bind this address (e.g. 0.0.0.0 inside a "
                             "container) at their endpoint's port; empty = the endpoint itself")
    store: str = opt("", "zmq: host:port of the version board the sink hosts (exact "
                         "staleness); empty = staleness from version stamps only")
    curve_dir: str = opt("", "zmq: folder made by `ffpipe keys` to turn on CURVE encryption")
    dist_timeout: float = opt(600.0, "torch.distributed process-group timeout, seconds", lo=1.0)
    dist_backend: str = opt("auto", "torch.distributed backend; auto = nccl when every local "
                                    "rank owns a GPU, else gloo", choices=("auto", "gloo", "nccl"))
