"""A trajectory reference's latents and conditioning against the model and against each other: a stored file that
does not fit is refused by name (reference and file) before the reference pass runs, instead of a torch error deep
in the U-Net or a latent of another size used silently."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from lib_refdrop.errors import RefDropError
from lib_refdrop.reference.manifest import seal_manifest, sha256_bytes
from lib_refdrop.reference.profiles import TRAJECTORY
from lib_refdrop.reference.store import MANIFEST, ReferenceStore
from tests.support.hostsim import AttnHost, make_unet
from tests.support.refdrop_harness import save, use

BASE = {"steps": 4, "sampler": "euler", "seed": 1, "cfg": 7.0, "height": 16, "width": 16}
USE = {**BASE, "seed": 2}
TEXT = "conditioning/{}/c_crossattn"


def replant(store: ReferenceStore, name: str, edit, slots=None) -> list[str]:
    """``edit(index, tensors)`` on the file of each slot (of ``slots``, else all), re-sealed as a forger would; the
    edited files' names."""
    folder = store.path(name)
    manifest = json.loads((folder / MANIFEST).read_text())
    files = []
    for slot in manifest["slots"]:
        if slots is not None and slot["index"] not in slots:
            continue
        entry = slot["files"][0]
        tensors = safetensors.torch.load_file(str(folder / entry["file"]))
        edit(slot["index"], tensors)
        data = safetensors.torch.save(tensors)
        (folder / entry["file"]).write_bytes(data)
        entry.update(bytes=len(data), sha256=sha256_bytes(data))
        files.append(entry["file"])
    (folder / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))
    return files


@pytest.fixture(scope="module")
def host():
    return AttnHost(make_unet("sd15", "tiny", seed=0))


@pytest.fixture
def store(tmp_path, host):
    store = ReferenceStore(tmp_path)
    save(host, store, "t", profile=TRAJECTORY.name, **BASE)
    return store


def test_a_latent_of_other_channels_than_the_models_is_refused_by_name(store, host):
    files = replant(store, "t", lambda i, t: t.__setitem__("latent", torch.cat([t["latent"], t["latent"]])))
    with pytest.raises(RefDropError, match=rf"'t' does not fit the current model: {files[0]} holds a latent of 8 "
                                           r"channels; the model takes 4"):
        use(host, store, "t", 0.5, **USE)


@pytest.mark.parametrize("shape", [(4, 8, 8), (4, 17, 13)])
@pytest.mark.parametrize("slot", [0, 2])
def test_one_slots_latent_of_another_shape_is_refused_by_name(store, host, shape, slot):
    """Slot 0 is used alone at the highest sigma (never beside another): every slot is compared, not only the two
    that are interpolated."""
    files = replant(store, "t", lambda i, t: t.__setitem__("latent", torch.randn(shape)), slots={slot})
    wanted = ", ".join(str(d) for d in shape)
    with pytest.raises(RefDropError, match=rf"'t' is corrupt: {files[0]} holds a latent of shape \[{wanted}\]; "
                                           r"the other slots' are \[4, 16, 16\]"):
        use(host, store, "t", 0.5, **USE)


def test_conditioning_of_another_width_in_one_chunk_is_refused_by_name(store, host):
    def widen(index, tensors):
        tensors[TEXT.format("uncond0")] = torch.zeros(77, 48)

    files = replant(store, "t", widen, slots={0})
    with pytest.raises(RefDropError, match=rf"'t' is corrupt: {files[0]} holds c_crossattn conditioning of different "
                                           r"widths \(uncond0 \[48\], cond0 \[32\]\)"):
        use(host, store, "t", 0.5, **USE)


def test_conditioning_of_another_width_than_the_models_is_refused_by_name(store, host):
    def widen(index, tensors):
        for chunk in ("uncond0", "cond0"):
            tensors[TEXT.format(chunk)] = torch.zeros(77, 48)

    files = replant(store, "t", widen, slots={0})
    with pytest.raises(RefDropError, match=rf"'t' does not fit the current model: {files[0]} holds c_crossattn "
                                           r"conditioning of width \[48\]; the model takes \[32\]"):
        use(host, store, "t", 0.5, **USE)


def test_text_conditionings_of_different_token_counts_are_batched_as_the_hosts_do(store, host):
    """A long prompt beside a short negative one: the shorter is repeated to the common length, which leaves
    attention over it unchanged."""
    before = use(host, store, "t", 0.5, **USE)

    def lengthen(index, tensors):
        key = TEXT.format("cond0")
        tensors[key] = tensors[key].repeat(2, 1)

    replant(store, "t", lengthen, slots={0})
    after = use(host, store, "t", 0.5, **USE)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)  # float rounding of a longer softmax
