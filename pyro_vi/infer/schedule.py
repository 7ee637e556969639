r"""The schedule of :func:`pyro_vi.fit`: a learning rate per epoch and a KL weight per step.

The learning rate of epoch :math:`e` (from 0) is :math:`\eta_e = \eta\,\gamma^e`; KL warm-up
weights the latent sites' log densities by

.. math:: \beta_t = \min\bigl(1,\ \beta_0 + (1 - \beta_0)\, t / T\bigr)

at step :math:`t` over :math:`T` warm-up steps (:math:`T = 0`: always 1), so the objective is
:math:`\mathbb E_q[\log p(x \mid z)] - \beta_t\,\mathrm{KL}`. In a loop of one's own::

    schedule = Schedule(lr=1e-3, lr_decay=0.99, warmup_steps=100 * steps_per_epoch)
    for epoch in range(epochs):
        svi.optimizers.set_lr(schedule.lr_at(epoch))
        for batch in batches:
            svi.beta = schedule.beta(step)
            svi.step(batch.x, idx=batch.idx, size=batch.size)
            step += 1
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Schedule"]


@dataclass(frozen=True)
class Schedule:
    """Learning rate ``lr * lr_decay**epoch``; KL weight rising linearly from ``beta_start``
    (> 0) to 1 over ``warmup_steps`` steps."""

    lr: float = 1e-3
    lr_decay: float = 1.0
    warmup_steps: int = 0
    beta_start: float = 0.01

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"learning rate {self.lr}: use a number > 0")
        if not 0 < self.beta_start <= 1:
            raise ValueError(f"anneal_start={self.beta_start}: use a value in (0, 1]")

    def lr_at(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (counted from 0)."""
        return self.lr * self.lr_decay**epoch

    def beta(self, step: int) -> float:
        """The KL weight of step ``step`` (counted from 0)."""
        if step >= self.warmup_steps:
            return 1.0
        return self.beta_start + (1.0 - self.beta_start) * (step / self.warmup_steps)
