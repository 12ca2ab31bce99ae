"""An exponential moving average of a model's weights (Polyak averaging), for evaluation.

The average follows the trained weights with ``decay`` per step, warmed up as in TensorFlow's
ExponentialMovingAverage (``min(decay, (1 + n) / (10 + n))`` after n updates) so that early,
random weights fade fast. Buffers (BatchNorm statistics) are copied, not averaged. The EMA is
what a run evaluates and saves as its model; its state (weights and update count) goes into
every checkpoint, so a resumed run continues the same average.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

MIN_WINDOW = 20  # steps: shorter averages add little over the last weights


class ModelEma:
    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged = self.module.state_dict()
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point and name in self._parameter_names():
                averaged[name].lerp_(value.detach(), 1.0 - decay)
            else:
                averaged[name].copy_(value)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])

    def _parameter_names(self) -> set[str]:
        if not hasattr(self, "_names"):
            self._names = {name for name, _ in self.module.named_parameters()}
        return self._names


def fitted_decay(total_steps: int) -> float:
    """A decay whose window (1 / (1 - decay)) is a tenth of the run, at least MIN_WINDOW steps:
    long enough to smooth the noise of batch-2 steps, short enough to follow the last decay of
    the learning rate."""
    window = max(MIN_WINDOW, total_steps / 10)
    return round(1.0 - 1.0 / window, 6) if math.isfinite(window) else 0.999
