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
