"""Replay: a per-stage ring of recent (pos, neg) inputs mixed into each training step.

A mitigation for drift: the layer keeps seeing inputs made by a range of upstream
versions, not only the newest, so it cannot overfit to whatever upstream emits right now.
Each step trains on the fresh batch plus an equal number of rows drawn from the ring;
only the fresh rows are forwarded downstream.
"""

from __future__ import annotations

import torch


class ReplayBuffer:
    def __init__(self, capacity: int, seed: int = 0):
        self.capacity = capacity
        self.pos = self.neg = None
        self.size = self.head = 0
        self.gen = torch.Generator().manual_seed(seed)

    def add(self, pos: torch.Tensor, neg: torch.Tensor) -> None:
        if self.pos is None:
            self.pos = pos.new_empty((self.capacity, pos.shape[1]))
            self.neg = neg.new_empty((self.capacity, neg.shape[1]))
        for start in range(0, len(pos), self.capacity):
            p, q = pos[start:start + self.capacity], neg[start:start + self.capacity]
            idx = (self.head + torch.arange(len(p))) % self.capacity
            self.pos[idx.to(pos.device)] = p.detach()
            self.neg[idx.to(pos.device)] = q.detach()
            self.head = (self.head + len(p)) % self.capacity
            self.size = min(self.size + len(p), self.capacity)

    def mix(self, pos: torch.Tensor, neg: torch.Tensor):
        """(pos, neg) with up to len(pos) replayed rows appended after the fresh ones."""
        if self.size == 0:
            return pos, neg
        idx = torch.randint(0, self.size, (min(len(pos), self.size),), generator=self.gen)
        idx = idx.to(pos.device)
        return torch.cat([pos, self.pos[idx]]), torch.cat([neg, self.neg[idx]])
