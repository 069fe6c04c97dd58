"""The parametric loss L(N, D) = E + A/N^α + B/D^β and its compute-optimal allocation under C = 6ND.

Minimising L(N, C/(6N)) over N gives N_opt = G (C/6)^a and D_opt = (C/6)^b / G with
a = β/(α+β), b = α/(α+β) and G = (αA / (βB))^{1/(α+β)}.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from megarec.common.errors import ConfigError


@dataclass(frozen=True)
class ScalingLaw:
    """Parameters of L(N, D) = E + A/N^alpha + B/D^beta (N = parameters, D = training tokens)."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def __post_init__(self):
        if min(self.A, self.B, self.alpha, self.beta) <= 0 or self.E < 0:
            raise ConfigError(f"scaling law needs E >= 0 and positive A, B, alpha, beta (got {self})")

    def loss(self, n, d):
        """Predicted loss (works on floats and numpy arrays)."""
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @property
    def a(self) -> float:
        """Exponent of N_opt ∝ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt ∝ C^b."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def optimal(self, flops: float) -> dict:
        """Compute-optimal N, D, predicted loss and tokens per parameter for a budget of `flops` (C = 6ND)."""
        if not flops > 0 or not math.isfinite(flops):
            raise ConfigError(f"FLOP budget must be a positive number, got {flops}")
        n = self.G * (flops / 6.0) ** self.a
        d = (flops / 6.0) ** self.b / self.G
        return {"flops": flops, "params": n, "tokens": d, "loss": self.loss(n, d), "tokens_per_param": d / n}

    def to_dict(self) -> dict:
        return {**asdict(self), "a": self.a, "b": self.b, "G": self.G}

    @classmethod
    def from_dict(cls, d: dict) -> "ScalingLaw":
        try:
            return cls(float(d["E"]), float(d["A"]), float(d["alpha"]), float(d["B"]), float(d["beta"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"scaling law: missing or invalid parameter {e}") from None


# Used by `megarec scaling plan` when no --fit is given: the reference parameter set quoted in the
# megarec issue tracker for recommendation co-pretraining. Fit your own runs before real planning.
REFERENCE_LAW = ScalingLaw(E=0.4232, A=502.32, alpha=0.3325, B=7.02, beta=0.1865)
