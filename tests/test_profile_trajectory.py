"""A trajectory profile (``keep="trajectory"``): a Save keeps the reference's latent at each sigma and its
conditioning; a Use evaluates the reference again from them before each U-Net call (attn/trajectory.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import safetensors.torch
import torch

from lib_refdrop.errors import RefDropError
from lib_refdrop.reference.manifest import seal_manifest, sha256_bytes
from lib_refdrop.reference.profiles import EXACT, PROFILES
from lib_refdrop.reference.store import MANIFEST, ReferenceStore
from tests.support.hostsim import AttnHost, make_unet
from tests.support.refdrop_harness import plain, save, use

BASE = {"steps": 6, "sampler": "euler", "seed": 1, "cfg": 7.0, "height": 16, "width": 16}
TRAJECTORY = dataclasses.replace(EXACT, name="test-trajectory", keep="trajectory")


@pytest.fixture(autouse=True)
def trajectory_profile(monkeypatch):
    monkeypatch.setitem(PROFILES, TRAJECTORY.name, TRAJECTORY)


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def host(request):
    return AttnHost(make_unet(request.param, "tiny", seed=0)), request.param


def _slots(store, name):
    manifest = store.manifest(name)
    folder = store.path(name)
    files = [[folder / entry["file"] for entry in slot["files"]]
             for slot in sorted(manifest["slots"], key=lambda s: s["index"])]
    return [{k: v for path in paths for k, v in safetensors.torch.load_file(str(path)).items()} for paths in files]


def test_a_trajectory_keeps_one_latent_per_sigma_and_the_conditioning_once(host, tmp_path):
    host, arch = host
    store = ReferenceStore(tmp_path)
    save(host, store, "t", family=arch, profile=TRAJECTORY.name, **BASE)
    slots = _slots(store, "t")
    assert len(slots) == BASE["steps"]
    assert all(set(slot) == {"latent"} for slot in slots[1:])
    assert set(slots[0]) == {"latent", "conditioning/uncond0/c_crossattn", "conditioning/cond0/c_crossattn"}
    assert slots[0]["latent"].shape == (4, 16, 16)
    save(host, store, "kv", family=arch, profile="exact", **BASE)
    assert store.manifest("t")["layers"] == store.manifest("kv")["layers"]  # kept for the model checks


@pytest.mark.parametrize("rfg", [-0.5, 0.3, 1.0])
def test_use_at_the_saves_settings_reproduces_the_save_image(host, tmp_path, rfg):
    host, arch = host
    store = ReferenceStore(tmp_path)
    saved = save(host, store, "t", family=arch, profile=TRAJECTORY.name, **BASE)
    out = use(host, store, "t", rfg, family=arch, **BASE)
    assert (out - saved).abs().max().item() <= 1e-4 * saved.abs().max().item()


@pytest.mark.parametrize("layout", ["batched", "split"])
def test_a_save_whose_first_step_is_cond_alone_reproduces_at_its_settings(tmp_path, layout):
    """Forge Classic evaluates its first step with the cond chunk alone: the uncond conditioning first comes at the
    second step, and is kept from there (kept only at the first sigma, a Use's uncond rows attended the cond pass)."""
    host = AttnHost(make_unet("sd15", "tiny", seed=0))
    store = ReferenceStore(tmp_path)
    args = dict(BASE, layout=layout, cond_alone_steps=1)
    saved = save(host, store, "t", profile=TRAJECTORY.name, **args)
    assert sorted(store.manifest("t")["chunks"]) == ["cond0", "uncond0"]
    first, second = _slots(store, "t")[:2]
    assert "conditioning/uncond0/c_crossattn" not in first and "conditioning/uncond0/c_crossattn" in second
    out = use(host, store, "t", 1.0, **args)
    assert (out - saved).abs().max().item() <= 1e-4 * saved.abs().max().item()


@pytest.mark.parametrize("sample_args", [{"sampler": "heun"}, {"layout": "split"}], ids=["heun", "split"])
def test_use_at_another_seed_attends_to_what_the_stored_rows_hold(tmp_path, sample_args):
    """At another seed the rows a trajectory gives are those the exact profile stored, up to float rounding (the pass
    evaluates the chunks in one call where a split Save made two)."""
    host = AttnHost(make_unet("sd15", "tiny", seed=0))
    store = ReferenceStore(tmp_path)
    save(host, store, "kv", profile="exact", **{**BASE, **sample_args})
    save(host, store, "t", profile=TRAJECTORY.name, **{**BASE, **sample_args})
    other = {**BASE, **sample_args, "seed": 3}
    from_kv, from_t = use(host, store, "kv", 0.5, **other), use(host, store, "t", 0.5, **other)
    effect = (from_kv - plain(host, **other)).norm().item()
    assert effect > 0
    assert (from_t - from_kv).norm().item() < 1e-3 * effect


def test_at_other_steps_the_effect_is_the_exact_profiles(tmp_path):
    """Other steps than the Save's: a trajectory evaluates latents interpolated in log-sigma at the Use's sigmas,
    the exact profile interpolates rows; the two effects agree in direction and size. Measured (seeds 3..5, Save 6
    steps, Use 9): cosine 0.997-0.998, size ratio 1.02-1.03; at 12 steps 0.988-0.993 and 1.01-1.04."""
    host = AttnHost(make_unet("sd15", "tiny", seed=0))
    store = ReferenceStore(tmp_path)
    save(host, store, "kv", profile="exact", **BASE)
    save(host, store, "t", profile=TRAJECTORY.name, **BASE)
    other = {**BASE, "steps": 9, "seed": 3}
    base = plain(host, **other)
    exact, trajectory = use(host, store, "kv", 0.5, **other) - base, use(host, store, "t", 0.5, **other) - base
    assert torch.nn.functional.cosine_similarity(exact.flatten(), trajectory.flatten(), dim=0).item() >= 0.98
    assert abs(trajectory.norm().item() / exact.norm().item() - 1) <= 0.1


def test_a_trajectory_is_a_small_fraction_of_the_rows(tmp_path):
    host = AttnHost(make_unet("sd15", "tiny", seed=0))
    store = ReferenceStore(tmp_path)
    save(host, store, "kv", profile="exact", **BASE)
    save(host, store, "t", profile=TRAJECTORY.name, **BASE)
    assert store.manifest("t")["bytes"] * 10 < store.manifest("kv")["bytes"]


def test_c_zero_changes_nothing(tmp_path):
    host = AttnHost(make_unet("sd15", "tiny", seed=0))
    store = ReferenceStore(tmp_path)
    save(host, store, "t", profile=TRAJECTORY.name, **BASE)
    other = {**BASE, "seed": 2}
    assert torch.equal(use(host, store, "t", 0.0, **other), plain(host, **other))


def _replant(store, name, edit):
    folder = store.path(name)
    manifest = json.loads((folder / MANIFEST).read_text())
    entry = manifest["slots"][0]["files"][0]
    tensors = safetensors.torch.load_file(str(folder / entry["file"]))
    edit(tensors)
    data = safetensors.torch.save(tensors)
    (folder / entry["file"]).write_bytes(data)
    entry.update(bytes=len(data), sha256=sha256_bytes(data))  # re-sealed, as a forger would
    (folder / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))
    return entry["file"]


@pytest.mark.parametrize("edit, why", [
    (lambda t: t.__setitem__("latent", torch.full_like(t["latent"], float("nan"))), "non-finite"),
    (lambda t: t.__setitem__("latent", t["latent"][0]), "'latent'"),
    (lambda t: t.__setitem__("input1.0/cond0/k", torch.zeros(4, 4)), "'input1.0/cond0/k'"),
    (lambda t: t.__setitem__("conditioning/cond7/c_crossattn", torch.zeros(4, 4)), "'conditioning/cond7"),
], ids=["nan", "latent-shape", "a-layer-row", "unknown-chunk"])
def test_a_planted_trajectory_is_refused_by_name(tmp_path, edit, why):
    host = AttnHost(make_unet("sd15", "tiny", seed=0))
    store = ReferenceStore(tmp_path)
    save(host, store, "t", profile=TRAJECTORY.name, **BASE)
    file = _replant(store, "t", edit)
    with pytest.raises(RefDropError, match=f"'t' is corrupt: {file} holds .*{why}" if why != "non-finite"
                       else f"'t' is corrupt: {file} holds non-finite"):
        use(host, store, "t", 0.5, **{**BASE, "seed": 2})


def test_a_save_from_an_image_with_a_trajectory_profile_is_refused_by_name(tmp_path):
    from devmodel.pipeline import Pipeline, to_pil
    from devmodel.toy import MODEL

    pipe = Pipeline.load(MODEL, steps=2)
    image = to_pil(pipe.generate(["circle"], [1])[0])
    with pytest.raises(RefDropError, match="keeps a generation's latents; an image is saved with a profile"):
        pipe.bake_image(ReferenceStore(tmp_path), "b", image, seed=1, profile=TRAJECTORY.name)
