"""Config: defaults, TOML, overrides, validation messages, and CLI override parsing."""

import pytest

from pipeline.overrides import parse_overrides
from pipeline.config import ConfigError, RunConfig, from_dict, load_config, to_dict, validate

pytestmark = pytest.mark.timeout(30)


def config_error(overrides=(), path=None) -> str:
    """The message of the ConfigError that loading must raise; asserted to be one line."""
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    msg = str(info.value)
    assert msg and "\n" not in msg, repr(msg)
    return msg


def test_defaults_validate():
    cfg = validate(RunConfig(out="runs/x"))  # (without out each gets runs/<date-time>)
    assert load_config(None, [("out", "runs/x")]) == cfg


def test_config_round_trips_through_dict():
    cfg = load_config(None, [("model.layers", "10,6,4"), ("train.lr", "0.25")])
    assert from_dict(to_dict(cfg)) == cfg


def test_toml_file_sets_nested_fields(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('out = "runs/x"\n'
                    "[train]\nepochs = 7\nlr = 0.01\nschedule = \"lockstep\"\n"
                    "[model]\nlayers = [10, 5, 5]\nnormalization = \"length\"\n"
                    "[pipeline]\ndevices = [\"cpu\", \"cpu\"]\nresume = true\n")
    cfg = load_config(str(path), [])
    assert cfg.out == "runs/x"
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.schedule) == (7, 0.01, "lockstep")
    assert cfg.model.layers == [10, 5, 5]
    assert cfg.model.normalization == "length"
    assert cfg.pipeline.devices == ["cpu", "cpu"]
    assert cfg.pipeline.resume == "true"
    assert cfg.train.batch_size == RunConfig().train.batch_size  # untouched field


def test_command_line_overrides_win_over_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[train]\nepochs = 7\nbatch_size = 11\n")
    cfg = load_config(str(path), [("train.epochs", "3")])
    assert cfg.train.epochs == 3
    assert cfg.train.batch_size == 11


def test_list_fields_parse_comma_separated_strings():
    cfg = load_config(None, [("model.layers", "784,500,500"),
                             ("model.threshold", "1.5,2")])
    assert cfg.model.layers == [784, 500, 500]
    assert cfg.model.threshold == [1.5, 2.0]


def test_bool_fields_accept_common_spellings():
    assert load_config(None, [("model.head", "yes")]).model.head is True
    assert load_config(None, [("model.head", "0")]).model.head is False
    assert "model.head" in config_error([("model.head", "maybe")])


@pytest.mark.parametrize("key, value", [
    ("train.optimizer", "rmsprop"),
    ("model.normalization", "batch"),
    ("data.dataset", "imagenet"),
    ("train.schedule", "bogus"),
])
def test_bad_choice_names_the_field(key, value):
    msg = config_error([(key, value)])
    assert key in msg and value in msg


@pytest.mark.parametrize("key, value", [
    ("train.epochs", "0"),
    ("train.epochs", "-1"),
    ("train.lr", "-0.1"),
    ("train.momentum", "1.5"),
    ("model.layers", "784,0,10"),
    ("net.base_port", "70000"),
    ("pipeline.max_staleness", "-2"),
    # wrong types
    ("train.epochs", "abc"),
    ("train.epochs", "1.5"),
    ("train.epochs", ""),
    ("train.lr", "fast"),
    ("model.layers", "784,ten"),
])
def test_out_of_range_or_wrong_type_names_the_field(key, value):
    assert key in config_error([(key, value)])


@pytest.mark.parametrize("toml, key", [
    ("[train]\nepochs = 1.5\n", "train.epochs"),
    ("[train]\nepochs = \"abc\"\n", "train.epochs"),
    ("[train]\nepochs = true\n", "train.epochs"),
    ("[model]\nlayers = 784\n", "model.layers"),
    ("[train]\nlr = [1]\n", "train.lr"),
])
def test_wrong_type_in_toml_names_the_field(tmp_path, toml, key):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    assert key in config_error(path=str(path))


def test_unknown_key_names_the_key():
    assert "train.bogus" in config_error([("train.bogus", "1")])


def test_unknown_section_names_the_section(tmp_path):
    assert "bogus" in config_error([("bogus.epochs", "1")])
    path = tmp_path / "bad.toml"
    path.write_text("[bogus]\nepochs = 1\n")
    assert "bogus" in config_error(path=str(path))


def test_unknown_key_in_toml_names_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nepochz = 1\n")
    assert "train.epochz" in config_error(path=str(path))


def test_threshold_count_must_match_layer_count():
    msg = config_error([("model.layers", "4,3,2"), ("model.threshold", "1")])
    assert "model.threshold" in msg


def test_skip_layers_must_leave_a_layer_to_score():
    assert "model.skip_layers" in config_error([("model.layers", "4,3,2"),
                                                ("model.skip_layers", "2")])
    assert "model.skip_layers" in config_error([("model.layers", "784,10")])


def test_layers_need_input_and_one_layer():
    assert "model.layers" in config_error([("model.layers", "784")])


def test_devices_count_must_match_layer_count():
    msg = config_error([("model.layers", "4,3,2"), ("pipeline.devices", "cpu")])
    assert "pipeline.devices" in msg


@pytest.mark.parametrize("key, value", [
    ("pipeline.devices", "cpu,gpu"),
    ("pipeline.devices", "cpu,cuda:x"),
    ("train.device", "tpu"),
])
def test_bad_device_string_names_the_field_and_value(key, value):
    msg = config_error([("model.layers", "4,3,2"), (key, value)])
    assert key in msg and value.split(",")[-1] in msg


def test_good_device_strings_pass():
    cfg = load_config(None, [("model.layers", "4,3,2,2"),
                             ("pipeline.devices", "cpu,cuda,cuda:1")])
    assert cfg.pipeline.devices == ["cpu", "cuda", "cuda:1"]


def test_bad_toml_syntax_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[train\nepochs = = 3\n")
    msg = config_error(path=str(path))
    assert "broken.toml" in msg and "TOML" in msg


def test_missing_config_file_names_the_path(tmp_path):
    path = tmp_path / "nope.toml"
    msg = config_error(path=str(path))
    assert "nope.toml" in msg


# ------------------------------------------------------------ command-line parsing

@pytest.mark.parametrize("argv, expected", [
    (["--train.epochs=5"], [("train.epochs", "5")]),
    (["--train.epochs", "5"], [("train.epochs", "5")]),
    (["--epochs", "5"], [("train.epochs", "5")]),
    (["--epochs=5"], [("train.epochs", "5")]),
    (["--layers", "784,10"], [("model.layers", "784,10")]),
    (["--data-dir", "/d"], [("data.data_dir", "/d")]),
    (["--train.batch-size=3"], [("train.batch_size", "3")]),
    (["--resume"], [("pipeline.resume", "true")]),
    (["--resume", "--epochs", "2", "--head"],
     [("pipeline.resume", "true"), ("train.epochs", "2"), ("model.head", "true")]),
])
def test_parse_overrides_forms(argv, expected):
    assert parse_overrides(argv) == (None, expected)


def test_parse_overrides_reads_config_path_in_both_forms():
    assert parse_overrides(["--config", "f.toml", "--epochs", "2"]) == (
        "f.toml", [("train.epochs", "2")])
    assert parse_overrides(["--config=f.toml"]) == ("f.toml", [])


def test_parse_overrides_result_loads_into_config():
    path, overrides = parse_overrides(["--layers", "784,10,10", "--resume", "--epochs=4"])
    cfg = load_config(path, overrides)
    assert (cfg.model.layers, cfg.pipeline.resume, cfg.train.epochs) == (
        [784, 10, 10], "true", 4)


def test_parse_overrides_rejects_positional_and_missing_value():
    with pytest.raises(ConfigError, match="stray"):
        parse_overrides(["stray"])
    with pytest.raises(ConfigError, match="--epochs"):
        parse_overrides(["--epochs"])


# ------------------------------------------------------------ dataset defaults

@pytest.mark.parametrize("name", ["digits", "synthetic", "mnist-5k"])
def test_the_first_width_follows_the_data_unless_layers_is_given(name):
    from pipeline.dataset_info import DATASET_INPUT
    cfg = load_config(None, [("data.dataset", name)])
    assert cfg.model.layers == [DATASET_INPUT[name]] + RunConfig().model.layers[1:]
    given = load_config(None, [("data.dataset", name), ("model.layers", "784,10,10")])
    assert given.model.layers == [784, 10, 10]


def test_a_datasets_defaults_fill_only_keys_the_run_does_not_set(tmp_path):
    from pipeline.dataset_info import DATASET_DEFAULTS
    own = DATASET_DEFAULTS["synthetic"]
    cfg = load_config(None, {"data.dataset": "synthetic"})
    assert cfg.model.label_strength == own["model.label_strength"] != 1.0
    assert cfg.data.train_size == own["data.train_size"]
    # Set to the dataclass default, on the command line or in a file: kept as set.
    assert load_config(None, {"data.dataset": "synthetic",
                              "model.label_strength": 1.0}).model.label_strength == 1.0
    path = tmp_path / "run.toml"
    path.write_text('[data]\ndataset = "synthetic"\n[model]\nlabel_strength = 1.0\n')
    assert load_config(str(path)).model.label_strength == 1.0
    assert load_config(str(path)).data.train_size == own["data.train_size"]


def test_a_run_config_json_reproduces_the_run_whatever_the_dataset_defaults():
    cfg = load_config(None, {"data.dataset": "synthetic", "model.label_strength": 1.0,
                             "model.layers": "64,20,20"})
    again = from_dict(to_dict(cfg))
    assert again == cfg and again.model.label_strength == 1.0


def test_validation_is_the_same_for_a_config_built_in_code():
    from pipeline.config import TrainConfig
    with pytest.raises(ConfigError, match="train.optimizer.*did you mean adam"):
        validate(RunConfig(train=TrainConfig(optimizer="adamw")))
    with pytest.raises(ConfigError, match="train.lr"):
        validate(RunConfig(train=TrainConfig(lr=-1.0)))
