"""The single-process reference schedules the pipelined runtime is measured against.

lockstep:   every batch goes through all layers; every layer takes its step (the usual
            FF implementation).
sequential: train layer 0 for all epochs, freeze it, then layer 1 on its outputs, ...
            (train A to completion, then B).
backprop:   the same architecture trained end to end with cross-entropy.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.batches import BatchStream
from pipeline.config import RunConfig
from pipeline.datasets import Dataset
from pipeline.drift.probe_set import probe_inputs
from pipeline.evaluation import accuracy, evaluate
from pipeline.ff import FFLayer, LinearHead, head_features, normalize
from pipeline.layer_trainer import LayerTrainer, lr_gain, make_optimizer
from pipeline.model_file import MODEL_FILE, data_info, save_model
from pipeline.recorder import Recorder
from pipeline.runlog import Progress
from pipeline.runtime.checkpoint import save_layer_states, save_module
from pipeline.runtime.roles import setup_process


def on_device(ds: Dataset, device: str) -> Dataset:
    if device == "cpu":
        return ds
    return dataclasses.replace(ds, x_train=ds.x_train.to(device), y_train=ds.y_train.to(device),
                               x_test=ds.x_test.to(device), y_test=ds.y_test.to(device))


def setup_torch(cfg: RunConfig) -> None:
    """This process trains every layer: the same setup as a stage process, then the init
    seed (the batches have their own generators, see BatchStream)."""
    setup_process(cfg.train.threads or torch.get_num_threads(), cfg.train.device)
    torch.manual_seed(cfg.train.seed)


class HeadTrainer:
    """Optional linear softmax head on the normalized activities of layers 1.."""

    def __init__(self, cfg: RunConfig, num_classes: int):
        self.cfg = cfg
        self.head = LinearHead(cfg.model.layers[2:], num_classes).to(cfg.train.device)
        self.opt = torch.optim.Adam(self.head.parameters(), lr=cfg.train.head_lr)
        self.num_classes = num_classes

    def step(self, layers, x, y) -> float:
        m = self.cfg.model
        feats = head_features(layers, x, self.num_classes, m.label_strength, m.normalization)
        loss = F.cross_entropy(self.head(feats), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()


def _probe(rec: Recorder, trainers: list[LayerTrainer], probe, step: int, upto: int) -> None:
    """Feed the fixed probe set through layers 0..upto-1, recording each layer's input."""
    h = probe
    with torch.no_grad():
        for k, tr in enumerate(trainers[:upto]):
            rec.observe(k, h, step)
            h = tr.output(tr.forward(h))


def _eval(cfg, ds, layers, head, rec, step, samples, final=False) -> dict:
    metrics = evaluate(layers, ds.x_test, ds.y_test, cfg, ds.num_classes,
                       head=head.head if head else None)
    rec.log_eval(step, samples, metrics, final=final)
    return metrics


def _finish(cfg, ds, rec, trainers, head, step, samples, t0, train_s, progress) -> dict:
    progress.phase("final evaluation")
    save_layer_states(cfg.out, [tr.state_dict() for tr in trainers])
    if head:
        save_module(cfg.out, "head", head.head)
    layers = [tr.layer for tr in trainers]
    metrics = _eval(cfg, ds, layers, head, rec, step, samples, final=True)
    progress.close()
    wall = time.monotonic() - t0
    summary = rec.finish({**metrics, "train_samples": samples, "wall_seconds": wall,
                          "train_seconds": train_s,
                          "samples_per_second": samples / max(train_s, 1e-9)})
    save_model(Path(cfg.out) / MODEL_FILE, cfg, data_info(ds),
               [layer.state_dict() for layer in layers],
               head=head.head.state_dict() if head else None)
    return summary


class FFRun:
    """What lockstep and sequential both set up: layers, head, logs, batches, probes."""

    def __init__(self, cfg: RunConfig, ds: Dataset):
        setup_torch(cfg)
        self.cfg = cfg
        self.t0 = time.monotonic()
        self.K = cfg.n_layers
        self.trainers = [LayerTrainer(k, cfg, cfg.train.device) for k in range(self.K)]
        self.layers = [tr.layer for tr in self.trainers]
        self.head = HeadTrainer(cfg, ds.num_classes) if cfg.model.head else None
        self.rec, self.stream = Recorder(cfg, self.K), BatchStream(cfg, ds)
        self.probe = probe_inputs(ds.x_train, ds.y_train, cfg, ds.num_classes)

    def hard(self, upto: int):
        """`hard` for `BatchStream.batches`: per-epoch hard-label tables scored by layers
        0..upto-1, or None when negatives are random."""
        if self.cfg.train.negatives != "hard":
            return None
        skip = min(self.cfg.model.skip_layers, upto - 1)
        return lambda epoch: self.stream.hard_labels(epoch, self.layers[:upto], skip)


def train_lockstep(cfg: RunConfig, ds: Dataset) -> dict:
    r = FFRun(cfg, ds)
    t0, K, trainers, layers, head = r.t0, r.K, r.trainers, r.layers, r.head
    rec, stream, probe = r.rec, r.stream, r.probe
    n, total = stream.n, stream.total
    progress = Progress(cfg.train.epochs * n, cfg.train.schedule, epochs=cfg.train.epochs)
    step = samples = 0
    for b in stream.batches(hard=r.hard(K)):
        x, y = b.x, b.y
        if cfg.drift.probe_every and step % cfg.drift.probe_every == 0:
            _probe(rec, trainers, probe, step, K)
        pos, neg = stream.pair(x, y, b.wrong)
        for k, tr in enumerate(trainers):
            pos, neg, stats = tr.train_step(pos, neg, step / total)
            rec.add(k, stats)
        if head:
            head.step(layers, x, y)
        step, samples = step + 1, samples + len(x)
        progress.update(len(x), loss=rec.stats[K - 1].means()["loss"])
        if step % cfg.train.log_every == 0:
            for k in range(K):
                rec.log_layer(k, step, samples, lr=cfg.train.lr * lr_gain(
                    cfg.train.lr_schedule, step / total))
        if cfg.train.eval_every and step % cfg.train.eval_every == 0:
            acc = _eval(cfg, ds, layers, head, rec, step, samples)
            progress.update(0, acc=acc["test_accuracy"])
    train_s = time.monotonic() - t0
    return _finish(cfg, ds, rec, trainers, head, step, samples, t0, train_s, progress)


def train_sequential(cfg: RunConfig, ds: Dataset) -> dict:
    """Layer k trains for all epochs on the outputs of the frozen layers 0..k-1."""
    r = FFRun(cfg, ds)
    t0, K, trainers, layers, head = r.t0, r.K, r.trainers, r.layers, r.head
    rec, stream, probe = r.rec, r.stream, r.probe
    n, B, per_layer = stream.n, stream.B, stream.total
    progress = Progress(K * cfg.train.epochs * n, "sequential", epochs=cfg.train.epochs,
                        layers=K)
    step = 0
    for k, tr in enumerate(trainers):  # each layer: epochs 0..E-1 of the same stream
        local = 0
        for p in tr.layer.parameters():
            p.requires_grad_(True)
        for b in stream.batches(hard=r.hard(k + 1)):
            if cfg.drift.probe_every and local % cfg.drift.probe_every == 0:
                _probe(rec, trainers, probe, step, k + 1)
            pos, neg = stream.pair(b.x, b.y, b.wrong)
            with torch.no_grad():  # frozen upstream: plain inference
                for up in trainers[:k]:
                    pos, neg = up.output(up.forward(pos)), up.output(up.forward(neg))
            _, _, stats = tr.train_step(pos, neg, local / per_layer)
            rec.add(k, stats)
            local, step = local + 1, step + 1
            progress.update(len(b.x), loss=rec.stats[k].means()["loss"])
            if local % cfg.train.log_every == 0:
                rec.log_layer(k, step, local * B)
        for p in tr.layer.parameters():
            p.requires_grad_(False)
    if head:  # the head needs every layer: train it last, same number of epochs
        for b in stream.batches():
            head.step(layers, b.x, b.y)
    train_s = time.monotonic() - t0
    samples = cfg.train.epochs * n
    return _finish(cfg, ds, rec, trainers, head, step, samples, t0, train_s, progress)


class BackpropNet(nn.Module):
    """The FF architecture (normalize -> linear -> relu per layer) plus a linear readout."""

    def __init__(self, cfg: RunConfig, num_classes: int):
        super().__init__()
        w, norm = cfg.model.layers, cfg.model.normalization
        self.layers = nn.ModuleList(FFLayer(w[i], w[i + 1], norm) for i in range(len(w) - 1))
        self.readout = nn.Linear(w[-1], num_classes)
        self.norm = norm

    def forward(self, x, inputs: list | None = None):
        for layer in self.layers:
            if inputs is not None:
                inputs.append(x)
            x = normalize(layer(x), self.norm)
        return self.readout(x)


def train_backprop(cfg: RunConfig, ds: Dataset) -> dict:
    setup_torch(cfg)
    t0 = time.monotonic()
    net = BackpropNet(cfg, ds.num_classes).to(cfg.train.device)
    opt = make_optimizer(net.parameters(), cfg.train)
    K = len(net.layers)
    rec = Recorder(cfg, K)
    probe = probe_inputs(ds.x_train, ds.y_train, cfg, ds.num_classes)
    stream = BatchStream(cfg, ds)
    n, total, neutral = stream.n, stream.total, stream.neutral
    progress = Progress(cfg.train.epochs * n, "backprop", epochs=cfg.train.epochs)
    step = samples = 0
    for b in stream.batches():  # the wrong labels are drawn but unused
        if cfg.drift.probe_every and step % cfg.drift.probe_every == 0:
            inputs = []
            with torch.no_grad():
                net(neutral(probe), inputs)
            for k, x_in in enumerate(inputs):
                rec.observe(k, x_in, step)
        for g in opt.param_groups:
            g["lr"] = cfg.train.lr * lr_gain(cfg.train.lr_schedule, step / total)
        loss = F.cross_entropy(net(neutral(b.x)), b.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step, samples = step + 1, samples + len(b.x)
        progress.update(len(b.x), loss=loss.item())
        for k in range(K):
            rec.add(k, {"loss": loss.item(), "g_pos": 0.0, "g_neg": 0.0})
            if step % cfg.train.log_every == 0:
                rec.log_layer(k, step, samples)
    train_s = time.monotonic() - t0
    progress.phase("final evaluation")
    save_layer_states(cfg.out, [{"layer": layer.state_dict(), "version": step}
                                for layer in net.layers])
    save_module(cfg.out, "readout", net.readout)
    with torch.no_grad():
        pred = net(neutral(ds.x_test)).argmax(1)
    metrics = {"test_accuracy": accuracy(pred, ds.y_test)}
    progress.close()
    rec.log_eval(step, samples, metrics, final=True)
    summary = rec.finish({**metrics, "train_samples": samples,
                          "wall_seconds": time.monotonic() - t0, "train_seconds": train_s,
                          "samples_per_second": samples / max(train_s, 1e-9)})
    # backprop's inference is its readout: the model file keeps it beside the layers
    save_model(Path(cfg.out) / MODEL_FILE, cfg, data_info(ds),
               [layer.state_dict() for layer in net.layers], readout=net.readout.state_dict())
    return summary


SINGLE_PROCESS = {"lockstep": train_lockstep, "sequential": train_sequential,
                  "backprop": train_backprop}


def run_single(cfg: RunConfig, ds: Dataset) -> dict:
    return SINGLE_PROCESS[cfg.train.schedule](cfg, on_device(ds, cfg.train.device))
