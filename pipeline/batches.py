"""The one stream of training batches every schedule trains on.

The pipelined source and the single-process schedules (lockstep, sequential, backprop)
all take their batches, wrong labels and overlays from here, so one seed means the same
batches whichever schedule runs them, and comparisons between schedules are fair.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch

from pipeline.augment import shift_images, shift_pixels
from pipeline.config import RunConfig
from pipeline.datasets import Dataset
from pipeline.ff import hard_wrong_labels, label_scores, overlay, random_wrong_labels

BATCHES, HARD, AUGMENT = 0, 1, 2  # the independent streams of one epoch


def epoch_generator(seed: int, epoch: int, stream: int = BATCHES) -> torch.Generator:
    """A fresh generator per (seed, epoch[, stream]).

    A pure function of its arguments, so a resumed run regenerates exactly the stream it
    would have produced; SeedSequence mixes the words, so nearby seeds and epochs give
    independent streams (no magic multiplier that two (seed, epoch) pairs can collide on).
    """
    words = [seed, epoch] if stream == BATCHES else [seed, epoch, stream]
    state = np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class Batch(NamedTuple):
    step: int             # 0..total-1 over the whole run
    epoch: int
    idx: torch.Tensor     # rows of the training set
    x: torch.Tensor
    y: torch.Tensor
    wrong: torch.Tensor   # one wrong label per row, never the true one


class BatchStream:
    """Epochs of shuffled batches of `ds`'s training set, each with its wrong labels."""

    def __init__(self, cfg: RunConfig, ds: Dataset):
        self.cfg, self.ds = cfg, ds
        self.seed, self.epochs = cfg.train.seed, cfg.train.epochs
        self.C, self.strength = ds.num_classes, cfg.model.label_strength
        self.n, self.B = len(ds.x_train), cfg.train.batch_size
        self.per_epoch = math.ceil(self.n / self.B)
        # pixels; 0 = no augmentation ("auto" resolved for the dataset)
        self.shift = shift_pixels(cfg.data.augment, cfg.data.dataset)
        self.total = self.epochs * self.per_epoch  # steps of a full run

    def batches(self, start_step: int = 0,
                hard: Callable[[int], torch.Tensor] | None = None) -> Iterator[Batch]:
        """Every batch from `start_step` to the end of the run.

        `hard(epoch)`, if given, returns a per-image wrong-label table (see `hard_labels`)
        and `wrong` is looked up in it. It is called lazily as each epoch starts, i.e.
        after the previous epoch was trained on. The random wrong labels are drawn either
        way, so the stream is the same with or without it.
        """
        for epoch in range(start_step // self.per_epoch, self.epochs):
            gen = epoch_generator(self.seed, epoch)
            aug = epoch_generator(self.seed, epoch, AUGMENT)  # never shifts the batches
            perm = torch.randperm(self.n, generator=gen)
            table = None
            for b in range(self.per_epoch):
                step = epoch * self.per_epoch + b
                idx = perm[b * self.B:(b + 1) * self.B]
                y = self.ds.y_train[idx]
                wrong = random_wrong_labels(y, self.C, gen)
                offsets = (torch.randint(-self.shift, self.shift + 1, (2, len(idx)),
                                         generator=aug) if self.shift else None)
                if step < start_step:  # drawn all the same: the rest of the epoch is fixed
                    continue
                if hard is not None:
                    if table is None:
                        table = hard(epoch)
                    wrong = table[idx]
                x = self.ds.x_train[idx]
                if offsets is not None:
                    x = shift_images(x, self.ds.image_shape, *offsets)
                yield Batch(step, epoch, idx, x, y, wrong)

    def hard_labels(self, epoch: int, layers: list, skip: int) -> torch.Tensor:
        """Per-image wrong labels sampled from the model's own label scores on the whole
        training set (Hinton's hard negatives): `layers` score every image now."""
        m = self.cfg.model
        scores = label_scores(layers, self.ds.x_train, self.C, strength=self.strength,
                              skip=skip, kind=m.goodness)
        widths = [l.linear.out_features for l in layers[skip:]]
        return self.hard_from_scores(epoch, scores, sum(widths))

    def hard_from_scores(self, epoch: int, scores: torch.Tensor, width: int) -> torch.Tensor:
        """Per-image wrong labels sampled in proportion to softmax(scores) over the wrong
        labels, from the epoch's own HARD generator so drawing them never shifts the batch
        stream. `scores` [n, C] are goodness sums over layers of `width` units in all;
        equal scores (an image not scored yet) give a uniform wrong label."""
        # Goodness sums are O(width); scale so the softmax is not a hard argmax.
        scores = scores / max(width, 1) * 10
        return hard_wrong_labels(scores, self.ds.y_train,
                                 epoch_generator(self.seed, epoch, HARD))

    def pair(self, x: torch.Tensor, y: torch.Tensor,
             wrong: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive, negative): the images with their true, then their wrong label."""
        return overlay(x, y, self.C, self.strength), overlay(x, wrong, self.C, self.strength)

    def neutral(self, x: torch.Tensor) -> torch.Tensor:
        """The images with the neutral label overlay (what the head and backprop see)."""
        return overlay(x, None, self.C, self.strength)
