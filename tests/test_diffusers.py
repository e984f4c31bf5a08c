"""The library's diffusers host (lib_refdrop/diffusers.py) on a stock diffusers ``UNet2DConditionModel``.

A tiny random U-Net of diffusers' own class, sampled with Euler and CFG through ``call_model``: a Save leaves the
image plain, a Use at the Save's settings reproduces it bit for bit, c = 0 installs nothing, and ``remove_refdrop``
gives back diffusers' own processors, so the U-Net computes what it computed before RefDrop was applied.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from lib_refdrop.diffusers import (
    RefDropConfig,
    RefDropHook,
    apply_refdrop,
    attention,
    call_model,
    layer_map,
    remove_refdrop,
)
from lib_refdrop.reference.store import ReferenceStore
from lib_refdrop.run import PassPatches
from lib_refdrop.standalone import save_session, start_use

REPO = Path(__file__).resolve().parents[1]
SIGMAS = torch.tensor([14.6, 4.0, 1.0, 0.0])
ALPHAS = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, 0)
SCHEDULE = ((1 - ALPHAS) / ALPHAS).sqrt()  # SD's sigma at each timestep


def sigma_to_t(sigma):
    return (SCHEDULE - sigma).abs().argmin()


def percent_to_sigma(percent):
    return 1e9 if percent <= 0 else 0.0 if percent >= 1 else float(SIGMAS[0]) * (1 - percent)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=2, cross_attention_dim=8, norm_num_groups=4)
    return model.float().eval().requires_grad_(False)


PROMPT, EMPTY = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(1)), torch.zeros(1, 3, 8)


@torch.no_grad()
def sample(hook, seed: int) -> torch.Tensor:
    """Euler at CFG 5, uncond rows then cond rows, as the hosts batch them."""
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed)) * SIGMAS[0]
    for sigma, after in zip(SIGMAS[:-1], SIGMAS[1:], strict=True):
        uncond, cond = call_model(hook, torch.cat([x, x]), sigma, torch.cat([EMPTY, PROMPT]), [1, 0],
                                  sigma_to_t).chunk(2)
        x = x + (uncond + 5.0 * (cond - uncond)) * (after - sigma)
    return x


class StockUnet:
    """``call_model``'s view of a U-Net without RefDrop: diffusers' own processors."""

    config = RefDropConfig()

    def __init__(self, unet):
        self.unet = unet

    def forward(self, x, timestep, context, *, cond_or_uncond, sigmas, transformer_options=None):
        return self.unet(x, timestep, encoder_hidden_states=context).sample


@pytest.fixture(scope="module")
def stock(unet):
    return sample(StockUnet(unet), 1), sample(StockUnet(unet), 2)


def _save(hook, store, name, profile="exact", seed=1):
    with save_session(store, name, profile=profile) as save:
        apply_refdrop(hook.unet, save.for_pass(hook.context("sd15", percent_to_sigma, seed=seed)))
        image = sample(hook, seed)
        save.finish({"seed": seed})
    return image


def _use(hook, store, name, rfg, seed):
    with start_use(store, reference=name, rfg=rfg) as use:
        patches = use.for_pass(hook.context("sd15", percent_to_sigma, seed=seed))
        apply_refdrop(hook.unet, patches)
        return sample(hook, seed), patches


def test_layers_are_named_as_the_hosts_name_them(unet):
    assert [layer.layer_id for layer in layer_map(unet)] == ["input1.0", "middle0.0", "output2.0", "output3.0"]


def test_save_is_plain_use_reproduces_it_and_c0_is_plain(unet, stock, tmp_path):
    """The exact profile on diffusers' own U-Net class, every image against diffusers' own processors."""
    store = ReferenceStore(tmp_path)
    plain, other_plain = stock
    hook = apply_refdrop(unet)
    try:
        assert torch.equal(sample(hook, 1), plain)  # applied without patches: AttnProcessor2_0's numbers
        assert torch.equal(_save(hook, store, "fox"), plain)
        again, _ = _use(hook, store, "fox", 0.5, 1)
        assert torch.equal(again, plain)
        guided, _ = _use(hook, store, "fox", 0.5, 2)
        assert not torch.equal(guided, other_plain)
        unguided, patches = _use(hook, store, "fox", 0.0, 2)
        assert patches.empty and torch.equal(unguided, other_plain)
    finally:
        remove_refdrop(unet)


def test_remove_refdrop_restores_the_original_processors(unet, stock):
    before = {name: module.processor for name, module in unet.named_modules() if hasattr(module, "processor")}
    apply_refdrop(unet, RefDropConfig(attn1=lambda q, k, v, extra_options: attention(q, k, v, extra_options) * 2))
    assert not torch.equal(sample(unet._refdrop_hook, 1), stock[0])
    remove_refdrop(unet)
    after = {name: module.processor for name, module in unet.named_modules() if hasattr(module, "processor")}
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
    assert not hasattr(unet, "_refdrop_hook") and not unet._forward_pre_hooks
    assert torch.equal(sample(StockUnet(unet), 1), stock[0])
    remove_refdrop(unet)  # nothing applied: nothing to do


@pytest.mark.parametrize("profile, psnr_floor", [("lean", 40.0), ("trajectory", math.inf)])
def test_profiles_that_need_the_models_parts_run_on_it(unet, stock, tmp_path, profile, psnr_floor):
    """``lean`` keeps each layer's input (the Save's attn1_input, the Use's projections), ``trajectory`` the latent
    (the model function wrapper ``call_model`` runs): at the Save's settings a Use gives the Save's image (lean: the
    default's goal, >= 40 dB), at another seed a guided one."""
    store = ReferenceStore(tmp_path)
    hook = apply_refdrop(unet)
    try:
        assert torch.equal(_save(hook, store, "fox", profile), stock[0])
        again, _ = _use(hook, store, "fox", 0.5, 1)
        mse = float((again - stock[0]).pow(2).mean())
        peak = float(stock[0].max() - stock[0].min())
        assert (math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)) >= psnr_floor
        assert not torch.equal(_use(hook, store, "fox", 0.5, 2)[0], stock[1])
    finally:
        remove_refdrop(unet)


def test_applying_again_swaps_the_patches_and_keeps_the_processors(unet):
    def twice(q, k, v, extra_options):
        return attention(q, k, v, extra_options) * 2

    hook = apply_refdrop(unet)
    try:
        processors = [module.processor for module in unet.modules() if hasattr(module, "processor")]
        assert apply_refdrop(unet, PassPatches(attn1=twice)) is hook and hook.config.attn1 is twice
        assert [module.processor for module in unet.modules() if hasattr(module, "processor")] == processors
        with pytest.raises(RuntimeError, match="already applied"):
            RefDropHook().install(unet)
        with pytest.raises(RuntimeError, match="outside RefDropHook.call"):
            unet(torch.zeros(1, 4, 8, 8), 0, encoder_hidden_states=EMPTY)
        with pytest.raises(ValueError, match="DiT"):
            apply_refdrop(unet, PassPatches(blocks=object()))
    finally:
        remove_refdrop(unet)


def test_docs_diffusers_example_runs(tmp_path, monkeypatch, capsys):
    """docs/library.md's diffusers example, in this process (diffusers and torch are imported already)."""
    text = (REPO / "docs" / "library.md").read_text(encoding="utf-8")
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "apply_refdrop" in block)
    monkeypatch.setattr("sys.argv", ["example", str(tmp_path)])
    exec(compile(code, "docs/library.md", "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    for line in ("Save == plain: True", "Use at the Save's settings == Save: True", "c = 0 == plain: True",
                 "removed == plain: True"):
        assert line in out, out
