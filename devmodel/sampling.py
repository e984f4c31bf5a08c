"""k-diffusion-style sampling that calls a U-Net with the hosts' batch layouts, through the library's diffusers host.

What matters for an attn1 patch is *how* the host batches and orders rows, which sigmas it sends and how many model
evaluations happen; this module reproduces those (checked against shared/host-traces in tests/test_hostsim.py):

- CFG != 1, layout "batched": one U-Net call per evaluation, rows = uncond chunk, then the cond chunks (AND
  sub-prompts in reverse order, as Forge's reversed run list gives), each chunk ``B`` rows in image order.
- CFG == 1: cond chunk(s) only.  Layout "split" (conds that cannot be concatenated): cond call first, then uncond.
- Per-image noise from seeds ``seed, seed+1, ...``; ancestral noise continues each image's generator (A1111 ImageRNG).
- img2img: A1111 ``setup_img2img_steps`` without ``img2img_fix_steps``: ``int(steps*denoise) + 1`` evaluations
  starting inside the full ``steps`` schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from lib_refdrop.diffusers import RefDropConfig, RefDropHook, apply_refdrop, call_model
from lib_refdrop.run import PassPatches

from .schedule import DiscreteSchedule

__all__ = ["SAMPLERS", "SCHEDULE", "installed", "make_conds", "model_call", "sample"]

SCHEDULE = DiscreteSchedule()
UNCOND_SEED = 0x5EED_0000  # the "empty negative prompt": the same for every prompt_seed


def _randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def make_conds(cross_dim: int, prompt_seed: int = 0, n_conds: int = 1,
               tokens: int = 77) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Deterministic random text embeddings: ``n_conds`` cond embeddings (AND sub-prompts, in prompt order) and the
    uncond embedding, each ``[1, tokens, cross_dim]``."""
    conds = [_randn((1, tokens, cross_dim), 1_000_003 * prompt_seed + i + 1) for i in range(n_conds)]
    return conds, _randn((1, tokens, cross_dim), UNCOND_SEED)


def model_call(host: RefDropHook, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
               cond_or_uncond: list[int]) -> torch.Tensor:
    """One U-Net call on the noisy ``x`` (rows of every chunk) at ``sigma`` on SD's schedule, through the pass's model
    function wrapper when it has one (lib_refdrop/diffusers.py ``call_model``). Returns eps."""
    return call_model(host, x, sigma, context, cond_or_uncond, SCHEDULE.sigma_to_t)


@contextmanager
def installed(host: RefDropHook, patches: PassPatches | RefDropConfig | None) -> Iterator[RefDropHook]:
    """A pass's ``patches`` on ``host`` for one generation, like a host installs them on a clone; plain after."""
    apply_refdrop(host.unet, patches)
    try:
        yield host
    finally:
        host.config = RefDropConfig()


class _CFGDenoiser:
    """``denoised = model(x, sigma)`` with CFG, calling the host with the hosts' row layout."""

    def __init__(self, host: RefDropHook, conds, uncond, cfg: float, layout: str, seen: list[float],
                 cond_alone_at: frozenset = frozenset()):
        if layout not in ("batched", "split"):
            raise ValueError(f"unknown layout {layout!r}")
        cond_chunks = [(0, c) for c in reversed(conds)]
        uncond_chunks = [(1, uncond)] if cfg != 1.0 else []
        if layout == "batched":
            self.calls = [uncond_chunks + cond_chunks]
        else:
            self.calls = [cond_chunks] + ([uncond_chunks] if uncond_chunks else [])
        self.host, self.cfg, self.seen = host, cfg, seen
        self.cond_alone_at = cond_alone_at  # sigmas evaluated with the cond chunks alone (Forge Classic's first step)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        cond_eps, uncond_eps = [], None
        calls = self.calls
        if float(sigma) in self.cond_alone_at:
            calls = [[(f, c) for f, c in call if not f] for call in calls]
            calls = [call for call in calls if call]
        for call in calls:
            ctx = torch.cat([c.expand(b, -1, -1) for _, c in call])
            eps = model_call(self.host, torch.cat([x] * len(call)), sigma, ctx, [f for f, _ in call])
            self.seen.append(float(sigma))
            for i, (flag, _) in enumerate(call):
                chunk = eps[i * b:(i + 1) * b]
                if flag:
                    uncond_eps = chunk
                else:
                    cond_eps.append(chunk)
        cond = x - sigma * (sum(cond_eps) / len(cond_eps))  # AND sub-prompts with equal weights
        if uncond_eps is None:
            return cond
        uncond = x - sigma * uncond_eps
        return uncond + (cond - uncond) * self.cfg


def _euler(model, x, sigmas, noise, callback):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
        callback(i, sigmas[i], x, denoised)
    return x


def _euler_a(model, x, sigmas, noise, callback):
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        sigma_up = torch.minimum(sigma_next, (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
        sigma_down = (sigma_next ** 2 - sigma_up ** 2) ** 0.5
        x = x + (x - denoised) / sigma * (sigma_down - sigma)
        if sigma_next > 0:
            x = x + noise() * sigma_up
        callback(i, sigma, x, denoised)
    return x


def _heun(model, x, sigmas, noise, callback):
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        d = (x - denoised) / sigma
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - model(x_2, sigma_next)) / sigma_next
            x = x + (d + d_2) / 2 * dt
        callback(i, sigma, x, denoised)
    return x


def _dpmpp_2m(model, x, sigmas, noise, callback):
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
        callback(i, sigmas[i], x, denoised)
    return x


SAMPLERS: dict[str, Callable] = {"euler": _euler, "euler_a": _euler_a, "heun": _heun, "dpmpp_2m": _dpmpp_2m}


@torch.no_grad()
def sample(host: RefDropHook, *, steps: int = 4, sampler: str = "euler", scheduler: str = "normal", seed: int = 1,
           batch_size: int = 1, cfg: float = 7.0, layout: str = "batched", n_conds: int = 1, height: int = 16,
           width: int = 16, denoise: float = 1.0, init_latent: torch.Tensor | None = None, prompt_seed: int = 0,
           return_sigmas: bool = False, callback: Callable[[dict], None] | None = None, cond_alone_steps: int = 0):
    """Run one generation (``batch_size`` images) and return the final latent ``[B, 4, height, width]`` (fp32).

    With ``return_sigmas=True`` returns ``(latent, sigmas)``: the sigma of every U-Net call in order (a "split"
    evaluation contributes two entries).  ``callback`` gets k-diffusion's ``{"x", "i", "sigma", "denoised"}`` after
    each step.  ``height``/``width`` are latent sizes. The first ``cond_alone_steps`` steps evaluate the cond chunks
    alone, as Forge Classic does its first step and Forge's "Ignore negative prompt during early steps" does.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; one of {sorted(SAMPLERS)}")
    sigmas = SCHEDULE.get_sigmas(steps, scheduler)
    if init_latent is not None:
        t_enc = int(min(denoise, 0.999) * steps)
        sigmas = sigmas[steps - t_enc - 1:]
    elif denoise != 1.0:
        raise ValueError("denoise < 1 needs init_latent")

    gens = [torch.Generator().manual_seed(seed + i) for i in range(batch_size)]

    def noise() -> torch.Tensor:
        return torch.cat([torch.randn((1, 4, height, width), generator=g, dtype=torch.float32) for g in gens])

    x = noise() * sigmas[0]
    if init_latent is not None:
        x = init_latent.to(torch.float32).expand(batch_size, -1, -1, -1) + x

    conds, uncond = make_conds(host.unet.config.cross_attention_dim, prompt_seed, n_conds)
    seen: list[float] = []
    model = _CFGDenoiser(host, conds, uncond, cfg, layout, seen,
                         frozenset(float(s) for s in sigmas[:cond_alone_steps]))

    def step_callback(i, sigma, x_now, denoised):
        if callback is not None:
            callback({"x": x_now, "i": i, "sigma": sigma, "denoised": denoised})

    x = SAMPLERS[sampler](model, x, sigmas, noise, step_callback)
    return (x, seen) if return_sigmas else x
