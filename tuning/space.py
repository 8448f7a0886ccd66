"""The search space, in one typed place.

Every name is a flat config parameter, so a trial's parameters (and the
study's best_params.json) apply to a config with `replace_flat`, and
`selftrain -P params=best_params.json` takes them as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace

import optuna

from lesion.errors import ConfigError


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
        for name, value in overrides.items():
            if name not in names:
                raise ConfigError(f"space parameter {name!r} is unknown; tunable: {', '.join(sorted(names))}")
            if isinstance(value, (int, float)):
                fixed[name] = float(value)
            elif isinstance(value, list) and len(value) in (2, 3) and value[0] <= value[1]:
                ranges[name] = Range(float(value[0]), float(value[1]), log=len(value) == 3 and value[2] == "log")
            else:
                raise ConfigError(f"space {name}={value!r} must be [low, high], [low, high, \"log\"] or a number")
        return replace(space, **ranges, fixed=fixed)
