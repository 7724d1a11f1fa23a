"""A trained network as an object for inference: `FFModel`, what `load_run` returns.

It is built from the tensors and metadata of a model file (`pipeline.model_file`), holds
float32 weights only, and computes exactly what the run's own evaluation computes: the
FF label scores of `pipeline.ff`, the head on `head_features`, or backprop's readout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.ff import (FFLayer, LinearHead, head_features, layer_label_scores, normalize,
                         overlay, summed_scores)
from pipeline.precision import DTYPES

CHUNK = 1000  # images per forward pass (layer_label_scores' own chunk), bounding memory


def _model_config(table: dict) -> ModelConfig:
    known = set(ModelConfig.__dataclass_fields__)
    return ModelConfig(**{k: v for k, v in table.items() if k in known})


class FFModel:
    """A trained network read from a model file: inference only; float32 weights, matmuls
    in the precision the run trained in (its `precision`: fp32, or bf16 where `auto` found
    fast bf16), so predictions are the run's own.

    Images `x` are [N, D] or [N, H, W], torch or numpy, float in [0, 1] (as the training
    data) or uint8 0..255 (divided by 255, as MNIST bytes are for training).

        scores(x)        [N, C]: per-label goodness summed over layers skip_layers.. (FF),
                         or the readout's logits (backprop)
        predict(x)       [N] labels: argmax of scores
        head_scores(x)   [N, C] logits of the linear head (runs trained with --head)
        head_predict(x)  [N] labels by the head
    """

    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict[str, str], source: Path):
        self.source = source
        self.version = meta.get("ff_pipeline_version")
        self.inference = meta["inference"]
        self.config = _model_config(json.loads(meta["model"]))
        self.data = json.loads(meta["data"])
        self.run = json.loads(meta.get("run", "{}"))
        self.num_classes, self.input_dim = self.data["num_classes"], self.data["input_dim"]
        self.image_shape = tuple(self.data["image_shape"] or ()) or None
        w, m = self.config.layers, self.config
        with torch.random.fork_rng(devices=[]):  # building layers draws init weights
            # Float32 weights; the matmuls in the precision the run trained (and was
            # evaluated) in, so predictions are the run's own (older files: float32).
            dtype = DTYPES[self.run.get("precision", "fp32")]
            self.layers = [FFLayer(w[k], w[k + 1], m.normalization, dtype)
                           for k in range(len(w) - 1)]
            self.head = (LinearHead(w[2:], self.num_classes) if "head.linear.weight"
                         in tensors else None)
            self.readout = (nn.Linear(w[-1], self.num_classes) if "readout.weight"
                            in tensors else None)
        parts = [(f"layers.{k}.", layer) for k, layer in enumerate(self.layers)]
        parts += [("head.", self.head), ("readout.", self.readout)]
        for prefix, module in parts:
            if module is not None:
                module.load_state_dict({k[len(prefix):]: t for k, t in tensors.items()
                                        if k.startswith(prefix)})
                module.eval()
        self.device = torch.device("cpu")

    def __repr__(self) -> str:
        extra = ", head" if self.head is not None else ""
        return (f"FFModel({'-'.join(map(str, self.config.layers))}, "
                f"{self.run.get('schedule', '?')}, {self.data['dataset']}, "
                f"inference={self.inference}{extra})")

    def to(self, device: str | torch.device) -> FFModel:
        self.device = torch.device(device)
        for module in [*self.layers, self.head, self.readout]:
            if module is not None:
                module.to(self.device)
        return self

    def inputs(self, x) -> torch.Tensor:
        """`x` as the float32 [N, D] tensor training saw; a wrong size or scale is refused."""
        x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            raise UserError("images: give an array of N images, [N, D] or [N, H, W]")
        n = int(np.prod(x.shape[1:]))
        if n != self.input_dim or (
                x.ndim > 2 and self.image_shape and tuple(x.shape[1:]) != self.image_shape):
            size = f"{'x'.join(map(str, x.shape[1:]))} ({n} values)" if x.ndim > 2 else \
                f"{n} values"
            want = (f"{'x'.join(map(str, self.image_shape))} images" if self.image_shape
                    else f"{self.input_dim} values per image")
            raise UserError(f"images are {size}, this model takes {want} (it was trained "
                            f"on {self.data['dataset']}); give images of that size")
        if x.dtype == torch.uint8:
            x = x.float() / 255.0  # float32 divide, as the datasets scale MNIST bytes
        elif x.is_floating_point():
            x = x.float()
            lo, hi = (float(v) for v in torch.aminmax(x)) if x.numel() else (0.0, 0.0)
            if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
                raise UserError(f"float images must lie in [0, 1] like the training data "
                                f"(found {lo:.3g}..{hi:.3g}); give uint8 0..255 or scale "
                                f"to [0, 1]")
        else:
            raise UserError(f"images of dtype {str(x.dtype).removeprefix('torch.')}: give "
                            f"uint8 0..255 or float in [0, 1]")
        return x.reshape(len(x), -1).to(self.device)

    @torch.no_grad()
    def _chunked(self, x, fn, per_image: tuple[int, ...] | None = None) -> torch.Tensor:
        """`fn` over `x` in chunks of CHUNK images; `per_image` is the shape of one image's
        result (default: one score per label), for an empty `x`."""
        x = self.inputs(x)
        if not len(x):
            return torch.zeros(0, *(per_image or (self.num_classes,)))
        return torch.cat([fn(x[i:i + CHUNK]) for i in range(0, len(x), CHUNK)]).cpu()

    def _readout(self, x: torch.Tensor) -> torch.Tensor:
        """Backprop's forward pass (`schedules.BackpropNet`): neutral label, then
        normalize(layer(h)) per layer, then the readout."""
        h = overlay(x, None, self.num_classes, self.config.label_strength)
        for layer in self.layers:
            h = normalize(layer(h), self.config.normalization)
        return self.readout(h)

    def scores(self, x) -> torch.Tensor:
        m = self.config
        if self.readout is not None:
            return self._chunked(x, self._readout)
        return summed_scores(self.layer_scores(x), m.skip_layers)

    def predict(self, x) -> torch.Tensor:
        return self.scores(x).argmax(dim=1)

    def layer_scores(self, x) -> torch.Tensor:
        """[N, L, C]: each FF layer's own goodness per candidate label (`scores` adds
        layers skip_layers.. of these, in order: `ff.summed_scores`)."""
        if self.readout is not None:
            raise UserError(f"{self.source}: a backprop model has no per-layer goodness")
        m = self.config
        return self._chunked(x, lambda c: layer_label_scores(
            self.layers, c, self.num_classes, strength=m.label_strength, kind=m.goodness),
            per_image=(len(self.layers), self.num_classes))

    def unit_activity(self, x, labels) -> list[dict]:
        """Per FF layer, on the images `x` with their true `labels` overlaid (positive
        data): how many units are never active (`dead`: the FF loss sends them no
        gradient, so they stay dead) and the mean fraction of units active per image."""
        if self.readout is not None:
            raise UserError(f"{self.source}: a backprop model has no FF layers")
        x = self.inputs(x)
        labels = torch.as_tensor(labels, device=self.device)
        on = [torch.zeros(layer.linear.out_features, dtype=torch.bool, device=self.device)
              for layer in self.layers]
        active = [0.0] * len(self.layers)
        with torch.no_grad():
            for i in range(0, len(x), CHUNK):
                h = overlay(x[i:i + CHUNK], labels[i:i + CHUNK], self.num_classes,
                            self.config.label_strength)
                for k, layer in enumerate(self.layers):
                    h = layer(h)
                    positive = h > 0
                    on[k] |= positive.any(dim=0)
                    active[k] += float(positive.float().mean(dim=1).sum())
        return [{"units": len(o), "dead": int((~o).sum()),
                 "active_fraction": a / max(len(x), 1)} for o, a in zip(on, active)]

    def head_scores(self, x) -> torch.Tensor:
        if self.head is None:
            raise UserError(f"{self.source}: this model has no linear head (train with "
                            f"--head to get one)")
        m = self.config
        return self._chunked(x, lambda c: self.head(head_features(
            self.layers, c, self.num_classes, m.label_strength, m.normalization)))

    def head_predict(self, x) -> torch.Tensor:
        return self.head_scores(x).argmax(dim=1)
