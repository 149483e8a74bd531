"""Settings are typed and range-checked from one description (the config dataclasses' annotations and the bounds
tables), paths are checked before any work, and ``--resume`` says what it does."""

import dataclasses
import typing

import pytest

from dmh.cli import main
from dmh.errors import DmhError
from dmh.models import ALGORITHMS
from dmh.tracking.run import flatten_params
from dmh.training.config import (
    DEFAULTS,
    FIELD_BOUNDS,
    MODEL_FIELD_BOUNDS,
    TrainConfig,
    check_value,
    config_from_dict,
    make_config,
)
from dmh.training.run import run_params
from dmh.training.train import Trainer

SET_BY_THE_TASK = {"obs_dim", "act_dim", "discrete"}  # filled from the task, never overridden


def numeric(hint):
    return {int, float} & ({hint} | set(typing.get_args(hint)))


def test_every_config_field_has_a_type_check_and_every_number_a_range():
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        if field.name == "model":  # the model config: its own fields, below
            continue
        check_value(field.name, DEFAULTS[field.name], hints[field.name], FIELD_BOUNDS.get(field.name))
        assert not numeric(hints[field.name]) or field.name in FIELD_BOUNDS, f"{field.name} has no bounds"


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_overridable_model_field_has_a_type_check_and_every_number_a_range(algo):
    config = ALGORITHMS[algo].config
    hints = typing.get_type_hints(config)
    for field in dataclasses.fields(config):
        if field.name in SET_BY_THE_TASK:
            continue
        assert not numeric(hints[field.name]) or field.name in MODEL_FIELD_BOUNDS, f"model.{field.name} unbounded"
        if field.default is not dataclasses.MISSING:
            check_value(field.name, field.default, hints[field.name], MODEL_FIELD_BOUNDS.get(field.name))


@pytest.mark.parametrize("setting,message", [
    ("seed=-1", "seed must be an integer in [0, 2**32), got -1"),
    ("seed=1.5", "seed must be an integer, got 1.5"),
    ("seed=4294967296", "seed must be an integer in [0, 2**32)"),
    ("data_seed=-2", "data_seed must be an integer in [0, 2**32)"),
    ("steps=2.5", "steps must be an integer, got 2.5"),
    ("lr=abc", "lr must be a number, got 'abc'"),
    ("lr=.nan", "lr must be a positive number, got nan"),
    ("eval_tasks=-1", "eval_tasks must be a non-negative integer"),
    ("valuable_subgoals=3", "valuable_subgoals must be a boolean, got 3"),
    ("context_sampling=sideways", "context_sampling: unknown context_sampling 'sideways'"),
    ("dataset_path=5", "dataset_path must be a string, got 5"),
    ("model.dropout=1.5", "model.dropout must be a number in [0, 1), got 1.5"),
    ("model.d_model=0", "model.d_model must be a positive integer, got 0"),
    ("model.activation=tanh", "model.activation must be one of relu, gelu, got 'tanh'"),
    ("model.z_train=never", "model.z_train must be one of sample, mean, got 'never'"),
])
def test_a_mistyped_or_out_of_range_setting_is_one_line_before_any_work(workdir, capsys, setting, message):
    assert main(["train", "--algo", "dmh", "--task", "darkroom", "--preset", "smoke", "--set", setting]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dmh: error: ") and message in err
    assert not (workdir / "mlflow.db").exists() and not (workdir / "runs").exists()


def test_a_negative_seed_on_the_command_line_is_refused(workdir, capsys):
    assert main(["train", "--algo", "dmh", "--task", "darkroom", "--preset", "smoke", "--seed", "-1"]) == 2
    assert "seed must be an integer in [0, 2**32), got -1" in capsys.readouterr().err


def test_a_run_dir_that_cannot_be_created_is_refused_before_any_work(workdir, capsys):
    (workdir / "plain-file").write_text("not a folder")
    assert main(["train", "--algo", "dmh", "--task", "darkroom", "--preset", "smoke",
                 "--set", "run_dir=plain-file/runs"]) == 2
    err = capsys.readouterr().err
    assert "run_dir plain-file/runs cannot be created" in err and "is a file, not a folder" in err
    assert not (workdir / "mlflow.db").exists() and (workdir / "plain-file").read_text() == "not a folder"


def test_a_data_folder_that_cannot_be_written_is_refused_before_data_is_generated(workdir, capsys):
    (workdir / "plain-file").write_text("not a folder")
    assert main(["train", "--algo", "dmh", "--task", "darkroom", "--preset", "smoke",
                 "--set", "data_dir=plain-file/data"]) == 2
    assert "data folder plain-file/data cannot be created" in capsys.readouterr().err
    assert not (workdir / "mlflow.db").exists()


SMOKE = ["train", "--algo", "dmh", "--task", "darkroom", "--preset", "smoke"]


def test_resume_with_nothing_to_resume_stops_and_says_so(workdir, capsys):
    assert main([*SMOKE, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume: nothing to resume" in err and "--resume-or-start" in err
    assert not (workdir / "mlflow.db").exists()


def test_resume_after_a_changed_setting_names_the_settings_that_differ(workdir, capsys):
    assert main([*SMOKE, "--set", "lr=0.002"]) == 0
    capsys.readouterr()
    assert main([*SMOKE, "--set", "lr=0.003", "--set", "model.d_model=8", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "was made with other settings: lr 0.002 (now 0.003), model.d_model 16 (now 8)." in err
    assert err.count("\n") == 1


def test_resume_or_start_starts_a_new_run_and_says_so_then_resumes_it(workdir, caplog):
    caplog.set_level("INFO", logger="dmh")
    assert main([*SMOKE, "--resume-or-start"]) == 0
    assert "nothing to resume for these settings" in caplog.text
    caplog.clear()
    assert main([*SMOKE, "--resume-or-start"]) == 0
    assert "resuming" in caplog.text and "nothing to resume" not in caplog.text


def test_bad_input_shows_a_traceback_only_with_verbose(workdir, capsys):
    bad = ["train", "--algo", "dmh", "--task", "darkroom", "--preset", "smoke", "--set", "seed=-1"]
    assert main(bad) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["-v", *bad]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("seed must be an integer in [0, 2**32), got -1")


def test_a_model_override_of_c_is_the_setting_c_refused_by_the_same_check():
    with pytest.raises(DmhError) as via_model:
        make_config("dmh", "darkroom", "smoke", sets=["model.c=50"])
    with pytest.raises(DmhError) as direct:
        make_config("dmh", "darkroom", "smoke", sets=["c=50"])
    assert str(via_model.value) == str(direct.value) == "c=50 is longer than an episode of darkroom (20 steps)"


def test_a_model_override_of_a_run_setting_is_what_the_run_names_logs_and_builds(workdir):
    cfg = make_config("dmh", "darkroom", "smoke", sets=["model.c=4", "model.valuable_subgoals=false"])
    assert (cfg.c, cfg.valuable_subgoals) == (4, False)
    trainer = Trainer(cfg)
    assert (trainer.model.cfg.c, trainer.model.cfg.valuable_subgoals) == (4, False)
    assert "_c4_" in cfg.run_name


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_the_logged_params_equal_the_settings_the_model_was_built_with(workdir, algo):
    trainer = Trainer(make_config(algo, "darkroom", "smoke", sets=["model.c=4"]))
    params = flatten_params(run_params(trainer))
    built = dataclasses.asdict(trainer.model.cfg)
    assert {k.removeprefix("model."): v for k, v in params.items() if k.startswith("model.")} == \
        {k: str(v) for k, v in built.items()}
    for field in ("c", "valuable_subgoals"):
        if field in built:
            assert params[field] == str(built[field])


def test_a_config_is_resolved_once_frozen_and_rebuilt_from_its_dict_as_it_is():
    cfg = make_config("ad-transformer", "darkroom-hard", "cpu")
    assert (cfg.n_context, cfg.c, cfg.history_window, cfg.dt_context_len) == (cfg.spec.n_context, cfg.spec.c,
                                                                            "any_offset", cfg.spec.horizon)
    assert cfg.model.context_len == cfg.n_context * cfg.spec.horizon  # built once, from the resolved n
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.c = 3  # type: ignore[misc]
    again = config_from_dict(dataclasses.asdict(cfg))
    assert again == cfg and again.run_name == cfg.run_name


@pytest.mark.parametrize(("algo", "setting", "message"), [
    ("dmh", "model.rtg_scale=5", "model.rtg_scale is set by the task"),
    ("dt", "model.context_len=5", "model.context_len is set by dt_context_len"),
    ("dmh", "model.obs_dim=3", "model.obs_dim is set by the task"),
])
def test_model_fields_the_run_sets_cannot_be_overridden_apart_from_what_the_contexts_use(algo, setting, message):
    with pytest.raises(DmhError, match=message):
        make_config(algo, "darkroom", "smoke", sets=[setting])


def test_a_config_whose_model_disagrees_with_its_run_settings_cannot_be_made():
    cfg = make_config("dmh", "darkroom", "smoke")
    with pytest.raises(DmhError, match="model config disagrees with the run's c"):
        dataclasses.replace(cfg, c=4)
    with pytest.raises(DmhError, match="not a resolved config"):
        TrainConfig(**DEFAULTS)
