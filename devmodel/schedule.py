"""The SD eps-prediction discrete noise schedule in k-diffusion sigma units, as Forge/reForge build it.

scaled_linear betas 0.00085..0.012 over 1000 steps, ``sigma_t = sqrt((1 - ac_t) / ac_t)`` stored in float32; the
timestep fed to the U-Net is k-diffusion's log-sigma interpolation of ``t`` for that sigma.
"""

from __future__ import annotations

import torch

__all__ = ["DiscreteSchedule"]


class DiscreteSchedule:
    """sigma <-> t conversion and the "normal" (WebUI "Automatic") and "karras" step schedules."""

    def __init__(self, beta_start: float = 0.00085, beta_end: float = 0.012, n_train: int = 1000):
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n_train, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt().to(torch.float32)
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep for ``sigma`` (k-diffusion ``DiscreteSchedule.sigma_to_t``)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * high_idx).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]).exp()

    def percent_to_sigma(self, percent: float) -> float:
        """Like the hosts' ``percent_to_sigma`` (0 -> sentinel 999999999.9, 1 -> 0)."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.t_to_sigma(torch.tensor((1.0 - percent) * 999.0)))

    def get_sigmas(self, steps: int, scheduler: str = "normal") -> torch.Tensor:
        """``steps + 1`` float32 sigmas ending in 0 (the final 0 never reaches the model)."""
        if scheduler == "normal":
            t = torch.linspace(len(self.sigmas) - 1, 0, steps)
            sigmas = self.t_to_sigma(t)
        elif scheduler == "karras":
            rho = 7.0
            ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
            min_inv, max_inv = self.sigma_min ** (1 / rho), self.sigma_max ** (1 / rho)
            sigmas = ((max_inv + ramp * (min_inv - max_inv)) ** rho).to(torch.float32)
        else:
            raise ValueError(f"unknown scheduler {scheduler!r}")
        return torch.cat([sigmas, sigmas.new_zeros(1)])
