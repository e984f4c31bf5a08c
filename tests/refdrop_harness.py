"""Save and Use through the real engine on a hostsim U-Net, the way scripts/refdrop.py does it in a host."""

from __future__ import annotations

from hostsim import DiscreteSchedule, sample, sdpa_attention

from lib_refdrop.generation import PassContext, RefDropRun
from lib_refdrop.settings import build

SCHEDULE = DiscreteSchedule()


def host_attention(q, k, v, extra_options):
    return sdpa_attention(q, k, v, extra_options["n_heads"])


def context(family: str = "sd15", is_hr_pass: bool = False, seed: int = 1) -> PassContext:
    return PassContext(family=family, is_hr_pass=is_hr_pass, percent_to_sigma=SCHEDULE.percent_to_sigma,
                       attention=host_attention, inner=host_attention, seed=seed)


def save(host, store, name: str, family: str = "sd15", profile: str = "", **sample_args):
    """Generate with Save on; returns the latent once the reference is complete on disk."""
    run = RefDropRun(build({"enabled": True, "mode": "Save", "save_name": name, "profile": profile}), store)
    host.patch = run.patch_for_pass(context(family, seed=sample_args.get("seed", 1)))
    try:
        latent = sample(host, **sample_args)
    finally:
        host.patch = None
    run.finish_save({"seed": sample_args.get("seed", 1)}, None)
    run.writer.wait(60)
    assert run.writer.status.state == "saved", run.writer.status.message
    return latent


def use(host, store, name: str, rfg: float, family: str = "sd15", settings: dict | None = None, **sample_args):
    values = {"enabled": True, "mode": "Use", "reference": name, "rfg": rfg, **(settings or {})}
    run = RefDropRun(build(values), store)
    host.patch = run.patch_for_pass(context(family, seed=sample_args.get("seed", 1)))
    try:
        return sample(host, **sample_args)
    finally:
        host.patch = None


def plain(host, **sample_args):
    host.patch = None
    return sample(host, **sample_args)
