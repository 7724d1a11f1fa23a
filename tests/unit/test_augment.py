"""Augmentation at the source: a shifted image is the original moved by the stated
offset; shifts keep labels and shapes, are seeded, never touch the label pixels after
the overlay, and leave the batch stream itself (order, wrong labels) unchanged."""

import pytest
import torch

from pipeline.augment import check_augment, shift_images
from pipeline.batches import BatchStream
from pipeline.config import load_config
from pipeline.datasets import Dataset
from pipeline.errors import ConfigError


def image(h=5, w=6) -> torch.Tensor:
    return torch.arange(1.0, h * w + 1).view(1, h * w)  # every pixel distinct, none zero


@pytest.mark.parametrize("dx, dy", [(0, 0), (1, 0), (-2, 0), (0, 1), (0, -2), (2, -1)])
def test_a_shifted_image_is_the_original_moved_by_the_offset_with_zero_fill(dx, dy):
    h, w = 5, 6
    got = shift_images(image(h, w), (h, w), torch.tensor([dx]), torch.tensor([dy])).view(h, w)
    src = image(h, w).view(h, w)
    for y in range(h):
        for x in range(w):
            inside = 0 <= y - dy < h and 0 <= x - dx < w
            assert got[y, x] == (src[y - dy, x - dx] if inside else 0), (y, x)


def tiny_dataset(n=40, side=6, classes=4) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, side * side, generator=g) + 0.5  # no zero pixels: zero fill shows
    y = torch.arange(n) % classes
    return Dataset("tiny", x, y, x[:4], y[:4], classes, image_shape=(side, side))


def stream(augment: str, seed: int = 0) -> BatchStream:
    cfg = load_config(None, [("data.augment", augment), ("train.batch_size", 8),
                             ("train.epochs", 2), ("train.seed", seed),
                             ("model.layers", "36,10"), ("model.skip_layers", 0)])
    return BatchStream(cfg, tiny_dataset())


def test_shifts_keep_labels_shapes_and_the_stream_and_are_seeded():
    plain, a, b = (list(s.batches()) for s in (stream("none"), stream("shift:2"),
                                               stream("shift:2")))
    other_seed = list(stream("shift:2", seed=1).batches())
    moved = 0
    for p, x1, x2 in zip(plain, a, b):
        assert torch.equal(p.idx, x1.idx) and torch.equal(p.y, x1.y)
        assert torch.equal(p.wrong, x1.wrong) and x1.x.shape == p.x.shape
        assert torch.equal(x1.x, x2.x)                       # the same seed: the same shifts
        moved += int((x1.x != p.x).any(dim=1).sum())
    assert moved > len(plain)  # most images moved
    assert any(not torch.equal(s.x, o.x) for s, o in zip(a, other_seed))


def test_each_epoch_draws_fresh_shifts():
    s = stream("shift:2")
    batches = list(s.batches())
    first = {int(i): row for b in batches if b.epoch == 0 for i, row in zip(b.idx, b.x)}
    second = {int(i): row for b in batches if b.epoch == 1 for i, row in zip(b.idx, b.x)}
    assert sum(not torch.equal(first[i], second[i]) for i in first) > len(first) // 2


def test_the_label_overlay_comes_after_the_shift_and_is_never_moved():
    s = stream("shift:2")
    for b in s.batches():
        pos, neg = s.pair(b.x, b.y, b.wrong)
        C = s.C
        assert torch.equal(pos[:, :C], torch.nn.functional.one_hot(b.y, C).float())
        assert torch.equal(neg[:, :C], torch.nn.functional.one_hot(b.wrong, C).float())


def test_augmenting_data_that_is_not_an_image_or_by_too_much_is_refused():
    ds = tiny_dataset()
    check_augment("shift:2", ds)
    with pytest.raises(ConfigError, match="out of the frame"):
        check_augment("shift:6", ds)
    ds.image_shape = None
    with pytest.raises(ConfigError, match="not image data"):
        check_augment("shift:1", ds)
    with pytest.raises(ConfigError, match="data.augment"):
        load_config(None, [("data.augment", "rotate:5")])


def test_auto_is_each_datasets_own_augmentation_and_the_summary_names_it():
    from pipeline.augment import shift_pixels
    from pipeline.dataset_info import AUTO_AUGMENT, DATASETS
    from pipeline.records import base_summary
    for name in DATASETS:
        cfg = load_config(None, [("data.dataset", name)])
        assert cfg.data.augment == "auto"
        own = AUTO_AUGMENT.get(name, "none")
        assert BatchStream(cfg, tiny_dataset()).shift == shift_pixels(own)
        assert base_summary(cfg)["augment"] == own
    assert {"digits", "synthetic"}.isdisjoint(AUTO_AUGMENT)  # not 28x28 images
    ds = tiny_dataset()
    ds.image_shape, ds.name = None, "synthetic"
    check_augment("auto", ds)  # nothing to shift: accepted
