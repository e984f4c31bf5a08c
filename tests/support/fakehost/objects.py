"""Fake host objects: ``UnetPatcher`` (model_options semantics of both hosts), ``p``, and a runner that samples a
hostsim U-Net through whatever attn1 replace patches and model function wrapper the patcher holds."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace


class FakeUnetPatcher:
    """``clone()`` deep-copies ``model_options`` (as Forge's and reForge's ``UnetPatcher.clone`` do)."""

    clones = 0

    def __init__(self, model, model_options: dict | None = None, load_device=None):
        self.model = model
        self.model_options = model_options if model_options is not None else {"transformer_options": {}}
        self.load_device = load_device

    def clone(self):
        FakeUnetPatcher.clones += 1
        return FakeUnetPatcher(self.model, copy.deepcopy(self.model_options), self.load_device)

    def set_model_unet_function_wrapper(self, unet_wrapper_function):
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def model_patches_to(self, device):
        """What both hosts' ``ModelPatcher.model_patches_to`` does to the wrapper when the model is loaded."""
        wrapper = self.model_options.get("model_function_wrapper")
        if hasattr(wrapper, "to"):
            self.model_options["model_function_wrapper"] = wrapper.to(device)

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        to = self.model_options["transformer_options"]
        key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
        to.setdefault("patches_replace", {}).setdefault(name, {})[key] = patch

    def set_model_attn1_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_replace_all(self, patch, target="attn1"):
        for block_name in ("input", "middle", "output"):
            for number in range(16):
                for transformer_index in range(16):
                    self.set_model_patch_replace(patch, target, block_name, number, transformer_index)

    def set_model_attn1_patch(self, patch):
        self.model_options["transformer_options"].setdefault("patches", {}).setdefault("attn1_patch", []).append(patch)

    def attn1_input_patches(self) -> list:
        return list(self.model_options["transformer_options"].get("patches", {}).get("attn1_patch", []))

    def attn1_patches(self) -> dict:
        return self.model_options["transformer_options"].get("patches_replace", {}).get("attn1", {})


def make_model(flavour: str, diffusion_model=None):
    """``unet.model``: Forge keeps the schedule on ``predictor``, reForge on ``model_sampling``."""
    from tests.support.hostsim import DiscreteSchedule

    model = SimpleNamespace(diffusion_model=diffusion_model)
    if flavour == "forge":
        model.predictor = DiscreteSchedule()
    else:
        model.model_sampling = DiscreteSchedule()
    return model


def make_p(unet: FakeUnetPatcher, family_flag: str = "is_sd1", seed: int = 1234, **fields):
    sd_model = SimpleNamespace(forge_objects=SimpleNamespace(unet=unet), is_sd1=False, is_sd2=False, is_sdxl=False,
                               is_sd3=False)
    setattr(sd_model, family_flag, True)
    p = SimpleNamespace(
        sd_model=sd_model, extra_generation_params={}, all_seeds=[seed], seed=seed, all_prompts=["a cat"],
        prompt="a cat", all_negative_prompts=[""], negative_prompt="", width=128, height=128, steps=4,
        sampler_name="Euler", scheduler="Automatic", cfg_scale=7.0, denoising_strength=None, is_hr_pass=False,
        sd_model_name="tiny", sd_model_hash="0000", iteration=0, n_iter=1,
    )
    for key, value in fields.items():
        setattr(p, key, value)
    return p


def sample_patched(unet: FakeUnetPatcher, host_flavour=None, **kwargs):
    """Sample the hostsim U-Net of ``unet.model`` with the patcher's attn1 replace patches (the host lookup)."""
    from tests.support.hostsim import AttnHost, sample

    with AttnHost(unet.model.diffusion_model, host_flavour=host_flavour) as host:
        host.patches_replace = dict(unet.attn1_patches())
        host.attn1_patches = unet.attn1_input_patches()
        host.model_wrapper = unet.model_options.get("model_function_wrapper")
        return sample(host, **kwargs)


class PerLayerPatcher(FakeUnetPatcher):
    """ComfyUI's ModelPatcher as far as RefDrop uses it: per-layer attn1 replacements only."""

    set_model_replace_all = None

    def clone(self):
        plain = super().clone()
        return PerLayerPatcher(plain.model, plain.model_options, plain.load_device)


def reforge_kernels_as(monkeypatch, module_name: str) -> None:
    """The reForge stand-in's attention module (the fake hosts' kernel) imported as ``module_name`` for the test."""
    path = Path(__file__).resolve().parent / "reforge/ldm_patched/ldm/modules/attention.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, module_name, module)
