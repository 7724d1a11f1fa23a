"""The Python API: what `import pipeline` offers, configs built in code validated as the
command line's are (one ConfigError naming the field, before anything starts), and a
script without `if __name__ == "__main__":` told so in one line instead of a spawn
traceback per child."""

import subprocess
import sys
import textwrap

import pytest

import pipeline
from pipeline import (ConfigError, ModelConfig, RunConfig, TrainConfig, __version__,
                      load_config, train)

pytestmark = pytest.mark.timeout(60)


def test_the_api_names_resolve():
    assert callable(train) and callable(load_config) and isinstance(__version__, str)
    assert set(pipeline.__all__) >= {"train", "evaluate", "load_run", "load_config",
                                     "RunConfig", "__version__"}


def test_evaluate_and_load_run_come_from_the_model_file_module():
    pytest.importorskip("pipeline.model_file")  # written on another branch
    from pipeline import evaluate, load_run
    assert callable(evaluate) and callable(load_run)


@pytest.mark.parametrize("cfg, field", [
    (RunConfig(train=TrainConfig(optimizer="adamw")), "train.optimizer"),
    (RunConfig(train=TrainConfig(lr=-1.0)), "train.lr"),
    (RunConfig(train=TrainConfig(lr="fast")), "train.lr"),
    (RunConfig(train=TrainConfig(epochs=1.5)), "train.epochs"),
    (RunConfig(model=ModelConfig(layers=[784])), "model.layers"),
])
def test_a_config_built_in_code_fails_in_train_with_one_line_naming_the_field(
        cfg, field, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        train(cfg)
    assert field in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing written: no run folder


def test_a_config_built_in_code_gets_the_command_lines_conversions():
    from pipeline.config import validate
    cfg = validate(RunConfig(train=TrainConfig(lr=1, epochs="3"),
                             model=ModelConfig(layers=(64, 10, 10))))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3 and cfg.model.layers == [64, 10, 10]


def test_load_config_takes_a_dict_of_overrides_and_fits_the_data():
    cfg = load_config(overrides={"data.dataset": "digits", "train.epochs": 2})
    assert cfg.model.layers[0] == 64 and cfg.train.epochs == 2


def run_script(tmp_path, source: str):
    path = tmp_path / "user_script.py"
    path.write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=50)


def test_the_guard_check_tells_top_level_calls_from_guarded_ones(tmp_path):
    r = run_script(tmp_path, """
        from pipeline.processes.main_guard import unguarded_script
        print("top", unguarded_script())
        def main():
            print("guarded", unguarded_script())
        if __name__ == "__main__":
            main()
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"top {tmp_path / 'user_script.py'}", "guarded None"]


def test_a_pipelined_run_from_a_script_without_the_main_guard_fails_in_one_line(tmp_path):
    r = run_script(tmp_path, """
        from pipeline import load_config, train
        cfg = load_config(overrides={"data.dataset": "synthetic", "model.layers": "64,8,8",
                                     "train.epochs": 1, "out": "runs/x"})
        train(cfg)
    """)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("pipeline.errors.")]
    assert len(errors) == 1 and 'if __name__ == "__main__":' in errors[0]
    assert "user_script.py" in errors[0]
    assert "bootstrapping" not in r.stderr and len(r.stderr.splitlines()) < 15
    assert not (tmp_path / "runs").exists()  # refused before any process started
