"""Save and Use through the library's entry point (lib_refdrop/standalone.py): on a hostsim U-Net, or a Save fed
synthetic attn1 calls."""

from __future__ import annotations

import torch

from devmodel.sampling import SCHEDULE, installed, sample
from lib_refdrop import standalone
from lib_refdrop.diffusers import RefDropConfig
from lib_refdrop.reference.writer import SaveStatus
from tests.support.hostsim import host_attention


def context(family: str = "sd15", is_hr_pass: bool = False, seed: int = 1, host=None) -> standalone.PassContext:
    """A pass on a hostsim U-Net; with ``host``, its layers' projections too (a profile that keeps the input)."""
    return standalone.context(family, host_attention, SCHEDULE.percent_to_sigma, seed=seed, is_hr_pass=is_hr_pass,
                              projections=host.projections if host is not None else None)


def sample_with(host, patch, input_patch=None, wrapper=None, **sample_args):
    """Sample with ``patch`` on every attn1 layer (None: plain), ``input_patch`` as an attn1_patch and ``wrapper``
    as the model function wrapper, like a host for one generation."""
    with installed(host, RefDropConfig(patch, input_patch, wrapper)):
        return sample(host, **sample_args)


def save(host, store, name: str, family: str = "sd15", profile: str = "exact", **sample_args):
    """Generate with Save on (the exact profile unless told: tests compare Use with it); returns the latent once the
    reference is complete on disk."""
    seed = sample_args.get("seed", 1)
    with standalone.start_save(store, name, context(family, seed=seed, host=host), profile=profile) as session:
        latent = sample_with(host, session.patch, session.input_patch, session.model_wrapper, **sample_args)
        session.finish({"seed": seed})
    return latent


def use(host, store, name: str, rfg: float, family: str = "sd15", settings: dict | None = None,
        bake_trajectories: bool = False, **sample_args):
    """Generate with Use on (a trajectory reference's model function wrapper too). ``bake_trajectories``: a
    trajectory reference's first Use bakes its rows and later Uses read them (lib_refdrop/bake.py), as in a host; off
    here by default, so that a test measures a profile as it stores a reference."""
    ctx = context(family, seed=sample_args.get("seed", 1), host=host)
    with standalone.start_use(store, reference=name, rfg=rfg, bake_trajectories=bake_trajectories,
                              **(settings or {})) as session:
        patches = session.for_pass(ctx)
        return sample_with(host, patches.attn1, patches.attn1_input, patches.model_wrapper, **sample_args)


def plain(host, **sample_args):
    return sample_with(host, None, **sample_args)


def save_synthetic(store, name: str, generation: dict, preview=None) -> SaveStatus:
    """A real reference written by the Save patch and the writer from synthetic attn1 calls, without a U-Net: three
    layers (input, middle, output) at two sigmas, with CFG. For a library to show (the panel's tests, screenshots)."""

    def attention(q, k, v, extra_options):  # the image does not matter here, only what the Save records
        return q

    ctx = standalone.context("sd15", attention, lambda percent: 0.0, seed=generation.get("seed"))
    with standalone.start_save(store, name, ctx) as save:
        for sigma in (14.6, 1.0):
            for block in (("input", 1), ("middle", 0), ("output", 11)):
                q = k = v = torch.randn(2, 16, 8)
                save.patch(q, k, v, {"block": block, "block_index": 0, "cond_or_uncond": [1, 0], "n_heads": 2,
                                     "dim_head": 4, "sigmas": torch.tensor([sigma])})
        return save.finish(generation, preview)
