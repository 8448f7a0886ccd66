"""A weight EMA (Polyak averaging, as Mean Teacher keeps its teacher): the model that is validated and saved.

The raw weights of a small-batch segmenter jump from one epoch to the next
(±0.05 validation Jaccard on the ISIC sample); their exponential moving average
moves smoothly, scores higher and makes the best-epoch choice less of a lottery
(benchmarks/README.md, "Recipe parity"). Every float tensor of the state dict is
averaged, BatchNorm statistics included; integer buffers are copied.

The decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates, so a short
run (a 46-image teacher takes 5 steps an epoch) is not dominated by its random
initial weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._pairs: list[tuple[list[torch.Tensor], list[torch.Tensor]]] | None = None
        self._copied: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _bind(self, model: nn.Module) -> None:
        """Pair the average's tensors with the live model's once (the state dict's tensors are the parameters)."""
        live, mine = model.state_dict(), self.model.state_dict()
        floats = [k for k, v in mine.items() if v.is_floating_point()]
        self._pairs = ([mine[k] for k in floats], [live[k].detach() for k in floats])
        self._copied = [(mine[k], live[k]) for k, v in mine.items() if not v.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards model's current weights (call after each optimizer step)."""
        if self._pairs is None:
            self._bind(model)
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged, live = self._pairs
        torch._foreach_lerp_(averaged, live, 1.0 - decay)
        for mine, theirs in self._copied:
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged tensors (prefixed ema.) and the update count, for checkpoints."""
        out = {f"ema.{k}": v for k, v in self.model.state_dict().items()}
        out["ema_updates"] = torch.tensor(self.updates)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = {k.removeprefix("ema."): v for k, v in state.items() if k.startswith("ema.")}
        if own:
            self.model.load_state_dict(own)
            self.updates = int(state["ema_updates"])
