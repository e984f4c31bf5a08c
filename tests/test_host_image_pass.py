"""An image and its prompt as one row of a pass's U-Net call (lib_refdrop/webui/hosts/image_pass.py): the pass's
size (hires too), the centre crop, the latent's shape, dtype and device, the prompt's keyword arguments, and the
host calls they go through (stand-ins for the hosts' modules, recording what they are given)."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from types import ModuleType, SimpleNamespace

import pytest
import torch
from PIL import Image

from lib_refdrop.errors import RefDropError
from lib_refdrop.webui.hosts import image_pass
from lib_refdrop.webui.hosts.host import host_extras
from tests.support.fakehost.objects import FakeUnetPatcher, make_model, make_p


def pooled_latent(pixels: torch.Tensor) -> torch.Tensor:
    """A stand-in VAE: 8x8 average pooling, 4 channels (the colour channels and their mean), in float16."""
    pooled = torch.nn.functional.avg_pool2d(pixels, 8)
    return torch.cat([pooled, pooled.mean(dim=1, keepdim=True)], dim=1).half()


def striped(width: int, height: int) -> Image.Image:
    """Red outer thirds, a green middle third (along the longer side)."""
    image = Image.new("RGB", (width, height), "red")
    if width >= height:
        image.paste((0, 255, 0), (width // 3, 0, 2 * width // 3, height))
    else:
        image.paste((0, 255, 0), (0, height // 3, width, 2 * height // 3))
    return image


def test_pass_size_is_the_hires_size_in_a_hires_pass():
    p = make_p(FakeUnetPatcher(make_model("forge")), width=64, height=96)
    assert image_pass.pass_size(p) == (64, 96)
    p.is_hr_pass, p.hr_upscale_to_x, p.hr_upscale_to_y = True, 128, 192
    assert image_pass.pass_size(p) == (128, 192)


@pytest.mark.parametrize("size", [(300, 100), (100, 300)])
def test_crop_keeps_the_centre(size):
    cropped = image_pass.crop_to_size(striped(*size), 32, 32)
    assert cropped.size == (32, 32) and cropped.mode == "RGB"
    pixels = torch.from_numpy(__import__("numpy").asarray(cropped, dtype="float32"))
    assert pixels[..., 1].mean() > 240 and pixels[..., 0].mean() < 15  # only the green middle is left


def test_crop_converts_modes_and_fits_other_aspect_ratios():
    cropped = image_pass.crop_to_size(Image.new("RGBA", (50, 20), (10, 20, 30, 0)), 48, 64)
    assert cropped.size == (48, 64) and cropped.mode == "RGB" and cropped.getpixel((0, 0)) == (10, 20, 30)
    assert image_pass.crop_to_size(Image.new("L", (7, 9), 200), 16, 8).getpixel((3, 3)) == (200, 200, 200)


@pytest.mark.parametrize("bad", [None, "image.png", torch.zeros(3, 8, 8)])
def test_what_is_not_an_image_is_refused(bad):
    with pytest.raises(RefDropError, match="^RefDrop: the reference image is not an image"):
        image_pass.crop_to_size(bad, 8, 8)


def test_image_tensor_is_batched_chw_in_unit_range():
    tensor = image_pass.image_tensor(Image.new("RGB", (16, 8), (255, 0, 51)))
    assert tensor.shape == (1, 3, 8, 16) and tensor.dtype == torch.float32
    assert tensor[0, :, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])


def test_encode_image_gives_one_float32_latent_of_the_pass_size():
    p = make_p(FakeUnetPatcher(make_model("forge")), width=64, height=32)
    latent = image_pass.encode_image(p, striped(600, 100), pooled_latent, device=torch.device("cpu"))
    assert latent.shape == (1, 4, 4, 8) and latent.dtype == torch.float32
    assert latent[0, 1].min() > 0.95 and latent[0, 0].max() < 0.05  # a 2:1 crop of 6:1 keeps the green third
    p.is_hr_pass, p.hr_upscale_to_x, p.hr_upscale_to_y = True, 128, 64
    assert image_pass.encode_image(p, striped(300, 200), pooled_latent).shape == (1, 4, 8, 16)


def test_a_latent_of_the_wrong_shape_is_an_error():
    p = make_p(FakeUnetPatcher(make_model("forge")), width=64, height=32)
    with pytest.raises(RefDropError, match=r"^RefDrop: the VAE gave a latent of shape \[1, 4, 8, 8\]"):
        image_pass.encode_image(p, striped(64, 32), lambda pixels: torch.zeros(1, 4, 8, 8))


def test_conditioning_kwargs_for_sd_and_sdxl():
    sd = image_pass.conditioning_kwargs(torch.randn(1, 77, 768))
    assert set(sd) == {"c_crossattn"} and sd["c_crossattn"].shape == (1, 77, 768)
    xl = image_pass.conditioning_kwargs({"crossattn": torch.randn(1, 77, 2048), "vector": torch.randn(1, 2816)})
    assert xl["c_crossattn"].shape == (1, 77, 2048) and xl["y"].shape == (1, 2816)
    with pytest.raises(RefDropError, match="^RefDrop: this model's text conditioning is not supported"):
        image_pass.conditioning_kwargs([torch.randn(1, 77, 768)])


def test_encode_prompt_asks_with_the_pass_size():
    asked = []

    def learned(texts, width, height):
        asked.append((list(texts), width, height))
        return {"crossattn": torch.randn(len(texts), 77, 2048), "vector": torch.randn(len(texts), 2816)}

    p = make_p(FakeUnetPatcher(make_model("forge")), width=64, height=32, is_hr_pass=True, hr_upscale_to_x=96,
               hr_upscale_to_y=48)
    kwargs = image_pass.encode_prompt(p, "a red fox", learned, device=torch.device("cpu"))
    assert asked == [(["a red fox"], 96, 48)] and set(kwargs) == {"c_crossattn", "y"}
    with pytest.raises(RefDropError, match="^RefDrop: the image prompt must be text"):
        image_pass.encode_prompt(p, None, learned)


@pytest.fixture
def host_modules(monkeypatch):
    """The hosts' ``modules`` parts the encoders use, recording their calls."""
    log = SimpleNamespace(samples=[], conds=[])

    def images_tensor_to_samples(image, approximation=None, model=None):
        log.samples.append((tuple(image.shape), approximation, model))
        return pooled_latent(image) + torch.randn(1, 4, 1, 1)  # Forge's VAE samples its posterior

    class SdConditioning(list):
        def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
            super().__init__(prompts)
            self.width, self.height, self.is_negative_prompt = width, height, is_negative_prompt

    stubs = {
        "modules": ModuleType("modules"),
        "modules.shared": SimpleNamespace(opts=SimpleNamespace(sd_vae_encode_method="TAESD")),
        "modules.sd_samplers_common": SimpleNamespace(
            approximation_indexes={"Full": 0, "TAESD": 3}, images_tensor_to_samples=images_tensor_to_samples),
        "modules.prompt_parser": SimpleNamespace(SdConditioning=SdConditioning),
        "modules.devices": SimpleNamespace(autocast=nullcontext, device=torch.device("cpu")),
    }
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in ("shared", "sd_samplers_common", "prompt_parser", "devices"):
        monkeypatch.setattr(stubs["modules"], name, stubs[f"modules.{name}"], raising=False)
    return log


def test_host_extras_encode_through_the_hosts_img2img_and_prompt_functions(host_modules):
    p = make_p(FakeUnetPatcher(make_model("forge")), width=64, height=32, iteration=2, n_iter=3)

    def get_learned_conditioning(prompts):
        host_modules.conds.append((list(prompts), prompts.width, prompts.height, prompts.is_negative_prompt))
        return torch.randn(len(prompts), 77, 768)

    p.sd_model.get_learned_conditioning = get_learned_conditioning
    extras = host_extras(p)
    assert extras["batch_index"] == 2 and extras["batch_count"] == 3

    latent = extras["encode_image"](striped(600, 100))
    assert latent.shape == (1, 4, 4, 8) and latent.device == torch.device("cpu")
    assert host_modules.samples == [((1, 3, 32, 64), 3, p.sd_model)]  # the Settings' encoder, the loaded model

    kwargs = extras["encode_prompt"]("")
    assert host_modules.conds == [([""], 64, 32, False)] and kwargs["c_crossattn"].shape == (1, 77, 768)


def test_the_image_encoder_is_repeatable_and_leaves_the_global_generator_alone(host_modules):
    p = make_p(FakeUnetPatcher(make_model("forge")), width=64, height=32)
    encode = host_extras(p)["encode_image"]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, second = encode(striped(600, 100)), encode(striped(600, 100))
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), state)


def test_fixed_rng_repeats_draws_and_restores_the_state():
    torch.manual_seed(5)
    expected_next = torch.randn(3)
    torch.manual_seed(5)
    with image_pass.fixed_rng():
        inside = torch.randn(3)
    with image_pass.fixed_rng():
        assert torch.equal(torch.randn(3), inside)
    assert torch.equal(torch.randn(3), expected_next)


@pytest.mark.parametrize("flavour", ["forge", "reforge"])
def test_the_pass_context_carries_the_encoders_and_the_batch(flavour):
    from lib_refdrop.webui import hosts
    from tests.support import fakehost

    with fakehost.activated(flavour):
        p = make_p(FakeUnetPatcher(make_model(flavour)), iteration=1, n_iter=4)
        ctx = hosts.detect().pass_context(p)
    assert callable(ctx.encode_image) and callable(ctx.encode_prompt)
    assert (ctx.batch_index, ctx.batch_count) == (1, 4)
    assert ctx.size == (p.width, p.height)  # the batch's first image's mask is cut to it
