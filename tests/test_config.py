import argparse

import pytest

from lesion import config as C
from lesion.errors import ConfigError
from tests.conftest import REPO


@pytest.mark.parametrize("cls", [C.FinetuneConfig, C.PretrainConfig, C.EvaluateConfig, C.PredictConfig])
def test_flat_names_are_unique_and_round_trip(cls):
    flat = C.to_flat(cls())
    assert len(flat) == len(C.flat_fields(cls))
    assert C.from_flat(cls, flat) == cls()


def test_from_flat_parses_strings_like_mlflow_passes_them():
    cfg = C.from_flat(C.FinetuneConfig, {"epochs": "3.0", "lr": "0.01", "skip_bad": "true", "arch": "pspnet"})
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.skip_bad, cfg.model.arch) == (3, 0.01, True, "pspnet")


def test_entry_point_defaults_override_group_defaults():
    assert C.PretrainConfig().train.epochs != C.TrainConfig().epochs
    assert C.from_flat(C.PretrainConfig, {}).train.epochs == C.PretrainConfig().train.epochs


@pytest.mark.parametrize("values, fragment", [
    ({"epochs": "three"}, "epochs='three' is not a valid int"),
    ({"arch": "segformer"}, "must be one of"),
    ({"epoch": "3"}, "unknown parameter"),
    ({"skip_bad": "maybe"}, "skip_bad"),
    ({"batch_size": "0"}, "batch_size=0 must be >= 1"),
    ({"lr": "-1e-3"}, "lr=-0.001 must be > 0"),
    ({"dropout": "1.5"}, "dropout=1.5 must be in [0, 1)"),
    ({"label_fraction": "0"}, "label_fraction=0.0 must be in (0, 1]"),
    ({"grad_accum": "0"}, "grad_accum=0 must be >= 1"),
])
def test_bad_parameters_are_one_line_errors(values, fragment):
    with pytest.raises(ConfigError) as err:
        C.from_flat(C.FinetuneConfig, values)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_cli_arguments_use_config_defaults():
    parser = argparse.ArgumentParser()
    C.add_arguments(parser, C.FinetuneConfig)
    cfg = C.from_args(C.FinetuneConfig, parser.parse_args(["--epochs", "2", "--label_fraction", "0.1"]))
    assert cfg.train.epochs == 2 and cfg.data.label_fraction == 0.1 and cfg.model.encoder == "resnet18"


def test_mlproject_is_generated_from_the_configs():
    from lesion.mlproject import render

    assert (REPO / "MLproject").read_text() == render(), "MLproject is stale: run `make mlproject`"


def test_mlproject_parses_and_every_parameter_reaches_the_command():
    import yaml

    project = yaml.safe_load((REPO / "MLproject").read_text())
    from lesion.cli import ENTRY_POINTS

    assert set(ENTRY_POINTS) <= set(project["entry_points"])
    for name, entry in project["entry_points"].items():
        for param in entry["parameters"]:
            assert f"{{{param}}}" in entry["command"], (name, param)


def test_every_default_is_in_its_own_range():
    for cls in (C.FinetuneConfig, C.PretrainConfig, C.SelftrainConfig, C.TuneConfig, C.EvaluateConfig,
                C.PredictConfig, C.ExportConfig, C.ReportConfig, C.SweepConfig):
        assert C.from_flat(cls, C.to_flat(cls())) == cls()  # would raise on a default outside its range


def test_a_params_file_that_is_not_json_is_a_clear_error(tmp_path):
    bad = tmp_path / "best_params.json"
    bad.write_text("{lr: 0.1")
    with pytest.raises(ConfigError, match="best_params.json: cannot read tuned parameters"):
        C.load_params_file(str(bad))


def test_ranges_hold_for_configs_made_in_code_too():
    with pytest.raises(ConfigError, match="parameter batch_size=0 must be >= 1"):
        C.TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="parameter iterations=0 must be >= 1"):
        C.replace_flat(C.SelftrainConfig(), iterations=0)


def test_register_is_offered_only_where_something_is_registered():
    def names(cls):
        return {n for n, *_ in C.flat_fields(cls)}

    for cls in (C.FinetuneConfig, C.PretrainConfig, C.SelftrainConfig, C.SweepConfig):
        assert "register" in names(cls) and C.to_flat(cls())["register"] is True, cls
    for cls in (C.EvaluateConfig, C.TuneConfig, C.PredictConfig, C.ExportConfig, C.ReportConfig):
        assert "register" not in names(cls), cls
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['register'\] for EvaluateConfig"):
        C.from_flat(C.EvaluateConfig, {"register": "false"})


def test_the_tuning_view_of_a_study_registers_nothing():
    from tuning.study import selftrain_view

    view = selftrain_view(C.from_flat(C.TuneConfig, {"run_name": "study-run", "seed": 3, "output_dir": "o"}))
    assert view.run == C.TrainingRunConfig(run_name="study-run", seed=3, output_dir="o", register=False)


# --------------------------------------------------------------------------- None: "the teacher's"


@pytest.mark.parametrize("text", ["", "None", "none", " NONE ", None])
def test_none_is_spelled_empty_or_none_for_optional_fields(text):
    assert C.parse_value("student_epochs", int | None, text) is None
    assert C.parse_value("student_encoder", str | None, text) is None
    cfg = C.from_flat(C.SelftrainConfig, {"student_epochs": text, "student_lr": text, "student_encoder": text})
    assert (cfg.pseudo.student_epochs, cfg.pseudo.student_lr, cfg.pseudo.student_encoder) == (None, None, None)


def test_optional_fields_parse_their_values_and_refuse_the_old_zero():
    cfg = C.from_flat(C.SelftrainConfig, {"student_epochs": "10.0", "student_lr": "1e-3", "student_encoder": "resnet34"})
    assert (cfg.pseudo.student_epochs, cfg.pseudo.student_lr, cfg.pseudo.student_encoder) == (10, 0.001, "resnet34")
    with pytest.raises(ConfigError, match=r"student_epochs=0 must be >= 1, or none for the teacher's epochs"):
        C.from_flat(C.SelftrainConfig, {"student_epochs": "0"})
    with pytest.raises(ConfigError, match=r"student_lr='fast' is not a valid float or none"):
        C.from_flat(C.SelftrainConfig, {"student_lr": "fast"})
    # "none" is None only where None is a value: postprocess=none is a mode of its own
    assert C.from_flat(C.FinetuneConfig, {"postprocess": "none"}).model.postprocess == "none"
    with pytest.raises(ConfigError, match=r"epochs=None is not a valid int"):
        C.from_flat(C.FinetuneConfig, {"epochs": None})


def test_none_round_trips_through_the_flat_view_and_replace_flat():
    cfg = C.SelftrainConfig()
    assert C.to_flat(cfg)["student_epochs"] is None and C.from_flat(C.SelftrainConfig, C.to_flat(cfg)) == cfg
    assert C.replace_flat(cfg, student_lr=5e-4).pseudo.student_lr == 5e-4
    assert C.replace_flat(C.replace_flat(cfg, student_lr=5e-4), student_lr=None) == cfg


def test_students_inherit_the_teachers_values_where_theirs_are_none():
    from lesion.selftrain.loop import stage_configs

    teacher, student = stage_configs(C.from_flat(C.SelftrainConfig, {"epochs": 5, "lr": 2e-3, "encoder": "resnet34"}))
    assert (student.train.epochs, student.train.lr, student.model.encoder) == (5, 2e-3, "resnet34")
    _, student = stage_configs(C.from_flat(C.SelftrainConfig, {"epochs": 5, "student_epochs": 2, "student_lr": 1e-4,
                                                                "student_encoder": "resnet50"}))
    assert (student.train.epochs, student.train.lr, student.model.encoder) == (2, 1e-4, "resnet50")


def test_student_init_teacher_refuses_another_encoder_only():
    from lesion.selftrain.loop import check_student

    check_student(C.from_flat(C.SelftrainConfig, {"student_init": "teacher"}))
    check_student(C.from_flat(C.SelftrainConfig, {"student_init": "teacher", "student_encoder": "resnet18"}))
    check_student(C.from_flat(C.SelftrainConfig, {"student_init": "teacher", "student_encoder": "tu-resnet18"}))
    check_student(C.from_flat(C.SelftrainConfig, {"encoder": "tu-resnet18", "student_encoder": "resnet18"}))
    with pytest.raises(ConfigError, match="student_init=teacher needs the teacher's encoder"):
        check_student(C.from_flat(C.SelftrainConfig, {"student_init": "teacher", "student_encoder": "resnet34"}))


def test_a_config_made_in_code_or_read_from_a_model_json_checks_its_choices():
    with pytest.raises(ConfigError, match="postprocess='central_fil' must be one of central_fill, central"):
        C.ModelConfig(postprocess="central_fil")
    assert C.ModelConfig().postprocess == "central_fill"


def test_help_and_mlproject_say_what_none_means():
    from lesion.cli import entry_parser
    from lesion.mlproject import render

    help_text = " ".join(entry_parser("selftrain").format_help().split())
    assert "(default: none, the teacher's epochs)" in help_text and "(default: None)" not in help_text
    assert "student_epochs: {type: string, default: \"\"}" in render()


@pytest.mark.parametrize("logged, value, typ, same", [
    ("None", None, int | None, True),    # lesion logs str(value)
    ("''", None, int | None, True),      # mlflow run logs the MLproject default as it quoted it
    ("", None, float | None, True),
    ("none", None, str | None, True),
    ("'None'", None, None, True),        # the type is not needed for None
    ("''", None, None, True),
    ("10", None, int | None, False),
    ("10", 10, int | None, True),
    ("10.0", 10, None, True),
    ("None", 10, None, False),
    ("''", 1e-3, float | None, False),
    ("1e-3", 1e-3, float | None, True),
    ("''", "", str, True),               # a plain string field: '' is the empty string
    ("none", "none", str, True),         # ... and none is the text none
    ("none", None, str, False),
    ("'o'\"'\"'brien'", "o'brien", None, True),
    ("true", True, None, True),
    ("o'brien", "o'brien", None, True),  # lesion's own text, not shell-quoted
])
def test_same_value_reads_logged_params_as_their_field_type(logged, value, typ, same):
    assert C.same_value(logged, value, typ) is same


# --------------------------------------------------------------------------- presets: --config FILE, -P config=FILE


def preset_config(entry: str, argv: list[str]):
    from lesion.cli import ENTRY_POINTS, entry_parser, parameter_names

    return C.from_args(ENTRY_POINTS[entry].config, entry_parser(entry).parse_args(argv), parameter_names())


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_the_presets_are_the_readmes_recipes_and_apply_to_every_entry_point(preset):
    import json

    from lesion.cli import ENTRY_POINTS, parameter_names

    values = json.loads((REPO / "configs" / f"{preset}.json").read_text())
    assert set(values) <= parameter_names()
    cfg = preset_config("selftrain", ["--config", str(REPO / "configs" / f"{preset}.json")])
    flat = C.to_flat(cfg)
    assert {k: flat[k] for k in values} == values
    assert (flat["image_size"], flat["encoder"], flat["epochs"]) == {"cpu": (128, "resnet18", 30),
                                                                     "gpu": (384, "resnet34", 50)}[preset]
    for entry in ENTRY_POINTS:  # names of other entry points are skipped, never an error
        preset_config(entry, ["--config", str(REPO / "configs" / f"{preset}.json")])


def test_a_preset_applies_first_and_given_parameters_win(tmp_path):
    preset = tmp_path / "p.json"
    preset.write_text('{"epochs": 30, "student_epochs": 10, "lr": 0.001, "skip_bad": true, "student_lr": null}')
    cfg = preset_config("finetune", ["--config", str(preset), "--epochs", "3"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.skip_bad) == (3, 0.001, True)
    assert C.to_flat(cfg) == {**C.to_flat(C.FinetuneConfig()), "epochs": 3, "lr": 0.001, "skip_bad": True}
    cfg = preset_config("selftrain", ["--config", str(preset), "--student_epochs", "none"])
    assert (cfg.train.epochs, cfg.pseudo.student_epochs, cfg.pseudo.student_lr) == (30, None, None)
    # on the CLI an explicit value wins even where it is the default
    assert preset_config("finetune", ["--config", str(preset), "--epochs", "8"]).train.epochs == 8


def mlproject_argv(entry: str, params: dict[str, str]) -> list[str]:
    """The entry point's options in the command that `mlflow run -e entry -P ...` runs (MLflow's own substitution)."""
    import shlex

    from mlflow.projects import _project_spec

    command = _project_spec.load_project(str(REPO)).get_entry_point(entry).compute_command(params, None)
    words = shlex.split(command)
    assert words[:6] == ["python", "-m", "lesion.cli", "launch", entry, "--num_processes"]
    return words[words.index("--") + 1:]


def test_through_mlflow_run_a_preset_applies_and_parameters_other_than_the_default_win(tmp_path):
    cpu = str(REPO / "configs" / "cpu.json")
    cfg = preset_config("selftrain", mlproject_argv("selftrain", {"config": cpu, "epochs": "5", "lr": "0.001"}))
    assert (cfg.train.epochs, cfg.train.lr, cfg.pseudo.student_epochs, cfg.data.image_size) == (5, 0.001, 10, 128)
    # MLflow passes every parameter, its default too: the preset's value stays where -P gives the default
    cfg = preset_config("selftrain", mlproject_argv("selftrain", {"config": cpu, "epochs": "8", "student_epochs": ""}))
    assert (cfg.train.epochs, cfg.pseudo.student_epochs) == (30, 10)
    # without a preset nothing changes: every value MLflow passes is taken
    plain = preset_config("selftrain", mlproject_argv("selftrain", {"epochs": "5"}))
    assert plain == C.replace_flat(C.SelftrainConfig(), epochs=5)
    assert preset_config("evaluate", mlproject_argv("evaluate", {})) == C.EvaluateConfig()


@pytest.mark.parametrize("text, fragment", [
    ("{epochs: 3", "cannot read the preset"),
    ("[1, 2]", "must hold a JSON object of parameter names to values"),
    ('{"epoch": 3}', "'epoch' is no parameter of any entry point"),
    ('{"epochs": "three"}', "parameter epochs='three' is not a valid int"),
    ('{"epochs": 0}', "parameter epochs=0 must be >= 1"),
    ('{"epochs": 2.5}', "parameter epochs=2.5 is not a valid int"),
    ('{"arch": "segformer"}', "arch='segformer' must be one of"),
    ('{"data": ["a", "b"]}', 'data=["a", "b"] must be a number, a string, true/false or null'),
    ('{"epochs": null}', "parameter epochs=None is not a valid int"),
])
def test_a_bad_preset_is_one_line_that_names_the_file(text, fragment, tmp_path):
    preset = tmp_path / "bad.json"
    preset.write_text(text)
    with pytest.raises(ConfigError) as err:
        preset_config("finetune", ["--config", str(preset)])
    message = str(err.value)
    assert message.startswith(f"config={preset}") and fragment in message and "\n" not in message, message


def test_pretrain_takes_no_patience_or_keep_and_a_shared_preset_still_serves_it(tmp_path):
    # The pretext task has no val/jaccard to stop early on or pick an epoch by: the options are not pretrain's.
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['keep', 'patience'\] for PretrainConfig"):
        C.from_flat(C.PretrainConfig, {"patience": 3, "keep": "best"})
    preset = tmp_path / "shared.json"
    preset.write_text('{"epochs": 4, "patience": 5, "keep": "best"}')
    assert preset_config("pretrain", ["--config", str(preset)]).train.epochs == 4
    assert preset_config("finetune", ["--config", str(preset)]).train.patience == 5


def test_a_rule_between_two_parameters_waits_for_the_options_given(tmp_path):
    # The preset alone breaks it; the command line settles it, or the error names both values.
    preset = tmp_path / "p.json"
    preset.write_text('{"zoom_in": 0.6, "patience": 5}')
    cfg = preset_config("finetune", ["--config", str(preset), "--zoom_out", "0.2", "--keep", "best"])
    assert (cfg.noise.zoom_out, cfg.noise.zoom_in, cfg.train.patience, cfg.train.keep) == (0.2, 0.6, 5, "best")
    with pytest.raises(ConfigError, match=r"zoom_out=0.5 \+ zoom_in=0.6 is over 1"):
        preset_config("finetune", ["--config", str(preset), "--keep", "best"])
    with pytest.raises(ConfigError, match="patience=5 needs keep=best"):
        preset_config("finetune", ["--config", str(preset), "--zoom_out", "0.2"])


def test_a_missing_preset_is_one_line():
    with pytest.raises(ConfigError, match=r"config=nowhere.json: cannot read the preset \(.*No such file"):
        preset_config("finetune", ["--config", "nowhere.json"])
