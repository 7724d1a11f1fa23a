"""What the config needs to know about each dataset without loading it (no torch, no
files): its name, its input size and the defaults it brings. The loaders are in
`pipeline.datasets`; a test checks they agree with this table.

A dataset's defaults fill the keys a run does not set itself (in a `--config` file, an
option or an `FFPIPE_` variable; see `config.load_config`): the first width of
`model.layers` is the data's input size, and the settings it learns with at the default
budget. A `RunConfig` built in code is taken as written (and validated).
"""

DATASETS = ("mnist-5k", "mnist", "fashion-mnist", "digits", "synthetic")

DATASET_INPUT = {"mnist-5k": 784, "mnist": 784, "fashion-mnist": 784, "digits": 64,
                 "synthetic": 64}

# What `--data.augment auto` (the default) means for each dataset; the rest get none.
# One-pixel shifts, chosen on the proxy split (README, "The default, and how it was
# chosen"); fashion-mnist follows mnist unmeasured. digits (8x8) and synthetic (not
# images) are not shifted.
AUTO_AUGMENT = {"mnist-5k": "shift:1", "mnist": "shift:1", "fashion-mnist": "shift:1"}


def resolve_augment(spec: str, dataset: str) -> str:
    """The augmentation a run applies: `auto` becomes the dataset's own (AUTO_AUGMENT)."""
    return AUTO_AUGMENT.get(dataset, "none") if spec == "auto" else spec


DATASET_DEFAULTS = {
    # 80 % of sklearn's 1,797 digits; the rest is the test split.
    "digits": {"data.train_size": 1437},
    # 1,600 generated train images (+ 400 test). Next to 64 sigmoid features in (0, 1) a
    # label of 1.0 is a weak signal; 4 learns in a few epochs (README, "synthetic needs a
    # stronger label").
    "synthetic": {"data.train_size": 1600, "model.label_strength": 4.0},
}
