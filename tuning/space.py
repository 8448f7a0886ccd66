"""The search space, in one typed place.

Every name is a flat config parameter, so a trial's parameters (and the
study's best_params.json) apply to a config with `replace_flat`, and
`selftrain -P params=best_params.json` takes them as they are. A space is
checked against the configs when it is made: every name a float parameter of
tune's and selftrain's configs, every bound and fixed value in that
parameter's range. A renamed parameter or a bound out of range stops the study
at its start with one line, instead of failing every trial.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace

import optuna

from lesion.config import SelftrainConfig, TuneConfig, leaf_fields, optional_base, type_name
from lesion.errors import ConfigError

# A trial's parameters go into tune's selftrain view, and best_params.json into selftrain.
TUNED_CONFIGS = (TuneConfig, SelftrainConfig)


def check_parameter(name: str, values: tuple[float, ...], where: str) -> None:
    """That name is a float parameter of every tuned config and each of values is in its range."""
    for cls in TUNED_CONFIGS:
        leaf = leaf_fields(cls).get(name)
        if leaf is None:
            raise ConfigError(f"{where}: {name!r} is not a parameter of {cls.__name__} (renamed?); tune only "
                              "parameters that selftrain takes")
        typ, f = leaf
        if optional_base(typ)[0] is not float:
            raise ConfigError(f"{where}: {name} is not a float parameter ({type_name(typ)}); the search space "
                              "tunes float parameters only")
        valid = f.metadata.get("valid")
        for value in values:
            if valid and not valid[0](value):
                raise ConfigError(f"{where}: {name}={value!r} is outside the parameter's range: {name} must be "
                                  f"{valid[1]}")


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class SearchSpace:
    # student noise: augmentation strength and per-transform knobs
    noise: Range = Range(0.25, 2.0)
    color_jitter: Range = Range(0.0, 1.0)
    blur_noise: Range = Range(0.0, 1.0)
    distortion: Range = Range(0.0, 1.0)
    coarse_dropout: Range = Range(0.0, 1.0)
    flip_rot90: Range = Range(0.0, 1.0)
    shift_scale_rotate: Range = Range(0.0, 1.0)
    # model noise
    student_dropout: Range = Range(0.0, 0.5)
    student_drop_path: Range = Range(0.0, 0.3)
    # pseudo-labels
    threshold: Range = Range(0.5, 0.97)
    min_confidence: Range = Range(0.5, 0.97)
    pseudo_ratio: Range = Range(0.25, 4.0, log=True)
    # the student's optimiser (the teacher keeps lr: it is made once per study)
    student_lr: Range = Range(2e-4, 3e-3, log=True)
    fixed: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = "search space (tuning/space.py)"
        for f in fields(self):
            if f.name == "fixed":
                continue
            r: Range = getattr(self, f.name)
            if not r.low <= r.high or (r.log and r.low <= 0):
                raise ConfigError(f"{where}: {f.name} [{r.low!r}, {r.high!r}{', log' if r.log else ''}] must have "
                                  f"low <= high{' and low > 0 (log scale)' if r.log else ''}")
            check_parameter(f.name, (r.low, r.high), where)
        for name, value in self.fixed.items():
            check_parameter(name, (value,), where)

    def suggest(self, trial: optuna.Trial) -> dict[str, float]:
        params = {}
        for f in fields(self):
            if f.name == "fixed" or f.name in self.fixed:
                continue
            r: Range = getattr(self, f.name)
            params[f.name] = trial.suggest_float(f.name, r.low, r.high, log=r.log)
        return {**params, **self.fixed}

    @classmethod
    def from_json(cls, text: str) -> "SearchSpace":
        """Override ranges: '{"threshold": [0.7, 0.9], "student_lr": [1e-4, 1e-3, "log"], "min_confidence": 0.6}'
        (a number fixes the parameter)."""
        space = cls()
        if not text:
            return space
        try:
            overrides = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"space={text!r} is not JSON ({err.msg}); e.g. '{{\"threshold\": [0.7, 0.9]}}'") from None
        names = {f.name for f in fields(cls)} - {"fixed"}
        ranges, fixed = {}, dict(space.fixed)
        if not isinstance(overrides, dict):
            raise ConfigError(f"space={text!r} must be a JSON object of parameter names; e.g. "
                              "'{\"threshold\": [0.7, 0.9]}'")

        def number(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        for name, value in overrides.items():
            if name not in names:
                raise ConfigError(f"space parameter {name!r} is unknown; tunable: {', '.join(sorted(names))}")
            where = f"space {name}={json.dumps(value)}"
            if number(value):
                check_parameter(name, (float(value),), where)
                fixed[name] = float(value)
            elif (isinstance(value, list) and len(value) in (2, 3) and all(number(v) for v in value[:2])
                  and value[0] <= value[1] and (len(value) == 2 or value[2] == "log")):
                log = len(value) == 3
                if log and value[0] <= 0:
                    raise ConfigError(f"{where}: a log range needs low > 0")
                check_parameter(name, (float(value[0]), float(value[1])), where)
                ranges[name] = Range(float(value[0]), float(value[1]), log=log)
            else:
                raise ConfigError(f"{where} must be [low, high] with low <= high, [low, high, \"log\"] or a number")
        return replace(space, **ranges, fixed=fixed)
