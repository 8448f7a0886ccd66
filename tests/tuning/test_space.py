"""The search space is checked against the configs when it is made: a renamed parameter or a bound out of its
range is one line at the study's start, not every trial FAILED."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, fields, replace

import optuna
import pytest

from lesion.config import SelftrainConfig, TuneConfig, leaf_fields, optional_base, replace_flat
from lesion.errors import ConfigError
from tests.bad_inputs.conftest import assert_clean_error
from tuning.space import Range, SearchSpace


def test_the_default_space_names_float_parameters_within_their_ranges():
    space = SearchSpace()
    names = [f.name for f in fields(space) if f.name != "fixed"]
    for cls in (TuneConfig, SelftrainConfig):
        assert all(optional_base(leaf_fields(cls)[n][0])[0] is float for n in names), cls
    params = space.suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask())
    assert set(params) == set(names)
    replace_flat(SelftrainConfig(), **params)  # every suggestion is a valid selftrain config


def test_a_misspelt_or_renamed_name_in_the_space_is_one_line():
    @dataclass(frozen=True)
    class Misspelt(SearchSpace):
        treshold: Range = Range(0.5, 0.9)

    with pytest.raises(ConfigError, match=r"search space \(tuning/space.py\): 'treshold' is not a parameter of "
                                          r"TuneConfig") as err:
        Misspelt()
    assert "\n" not in str(err.value)


def test_only_float_parameters_are_tuned():
    @dataclass(frozen=True)
    class Epochs(SearchSpace):
        epochs: Range = Range(1, 10)

    with pytest.raises(ConfigError, match=r"epochs is not a float parameter \(int\); the search space tunes float parameters only"):
        Epochs()


@pytest.mark.parametrize("name, bounds, match", [
    ("threshold", Range(0.5, 1.2), r"threshold=1.2 is outside the parameter's range: threshold must be in \[0, 1\]"),
    ("threshold", Range(-0.1, 0.9), r"threshold=-0.1 is outside"),
    ("student_dropout", Range(0.0, 1.0), r"student_dropout must be in \[0, 1\)"),
    ("student_lr", Range(0.0, 1e-3), r"student_lr=0.0 is outside the parameter's range: student_lr must be > 0"),
    ("pseudo_ratio", Range(0.1, 0.05), r"low <= high"),
    ("pseudo_ratio", Range(0.0, 1.0, log=True), r"low > 0 \(log scale\)"),
])
def test_a_bound_outside_the_parameters_range_is_one_line(name, bounds, match):
    with pytest.raises(ConfigError, match=match):
        replace(SearchSpace(), **{name: bounds})


def test_a_fixed_value_is_checked_too():
    with pytest.raises(ConfigError, match=r"min_confidence=1.5 is outside"):
        SearchSpace(fixed={"min_confidence": 1.5})


@pytest.mark.parametrize("text, match", [
    ('{"threshold": [0.5, 1.2]}', r"space threshold=\[0.5, 1.2\]: threshold=1.2 is outside the parameter's range: "
                                  r"threshold must be in \[0, 1\]"),
    ('{"min_confidence": -0.5}', r"space min_confidence=-0.5: min_confidence=-0.5 is outside"),
    ('{"student_lr": [0, 1e-3, "log"]}', r"a log range needs low > 0"),
    ('{"threshold": [0.9, 0.7]}', r"must be \[low, high\] with low <= high"),
    ('{"threshold": ["a", 0.7]}', r"must be \[low, high\]"),
    ('{"threshold": [0.5, 0.7, "linear"]}', r"must be \[low, high\]"),
    ('{"noise": true}', r"must be \[low, high\]"),
    ('{"treshold": [0.1, 0.2]}', r"space parameter 'treshold' is unknown; tunable: "),
    ('[0.1, 0.2]', r"must be a JSON object"),
])
def test_space_json_overrides_are_checked_the_same_way(text, match):
    with pytest.raises(ConfigError, match=match) as err:
        SearchSpace.from_json(text)
    assert "\n" not in str(err.value)


def test_good_overrides_still_apply():
    space = SearchSpace.from_json('{"threshold": [0.0, 1.0], "student_lr": [1e-4, 1e-3, "log"], "pseudo_ratio": 2}')
    assert space.threshold == Range(0.0, 1.0) and space.student_lr == Range(1e-4, 1e-3, log=True)
    assert space.fixed == {"pseudo_ratio": 2.0}


def test_a_bad_space_stops_tune_at_its_start_with_one_line(tmp_path, tracking, capsys):
    from mlflow.tracking import MlflowClient

    from lesion.cli import main

    code = main(["tune", "--space", '{"threshold": [0.5, 1.5]}', "--storage", f"sqlite:///{tmp_path / 'o.db'}",
                 "--output_dir", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert_clean_error(subprocess.CompletedProcess(["lesion", "tune"], code, captured.out, captured.err), "tune",
                       r"space threshold=\[0.5, 1.5\]: threshold=1.5 is outside the parameter's range")
    assert not (tmp_path / "o.db").exists() and not (tmp_path / "out").exists(), "refused before the study was made"
    assert not MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])
