"""Helpers for the fault tests: tiny references written through the real writer, snapshots, store invariants."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import safetensors.torch
import torch

from lib_refdrop import standalone
from lib_refdrop.reference import compression
from lib_refdrop.reference.address import entry_name
from lib_refdrop.reference.manifest import Recording, seal_manifest
from lib_refdrop.reference.sigmas import Slot
from lib_refdrop.reference.store import INCOMING, MANIFEST, TRASH, ReferenceStore
from lib_refdrop.reference.writer import ReferenceWriter
from lib_refdrop.run import PassContext
from tests.support.hostsim import host_attention, load_trace

LAYERS = {"input1.0": (2, 4, 16), "middle0.0": (2, 8, 4), "output3.0": (2, 4, 16)}  # heads, dim_head, tokens
CHUNKS = ("uncond0", "cond0")
SIGMAS = (14.6, 7.0, 3.1, 1.2, 0.4)
PNG = b"\x89PNG\r\n\x1a\n" + b"not really a png, the store does not decode it"


def slot_tensors(seed: int, index: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 1000 + index)
    out = {}
    for lid, (heads, dim, tokens) in LAYERS.items():
        for chunk in CHUNKS:
            for t in ("k", "v"):
                out[entry_name(lid, chunk, t)] = torch.randn(tokens, heads * dim, generator=g)
    return out


GENERATION = {"seed": 1, "prompt": "a test"}


def recording(sigmas=SIGMAS) -> Recording:
    """What a Save of the tiny test model would have recorded: the manifest's description of the slots."""
    return Recording(
        layers={lid: {"n_heads": h, "dim_head": d, "tokens": n} for lid, (h, d, n) in LAYERS.items()},
        chunks=list(CHUNKS), dtype="float32", profile="exact", slots=[Slot(i, s, 0) for i, s in enumerate(sigmas)],
    )


def start_reference(store: ReferenceStore, name: str, seed: int = 0, overwrite: bool = False,
                    sigmas=SIGMAS, family: str = "sd15") -> ReferenceWriter:
    """Hand a whole tiny reference to a writer (two parts per slot, like a split cond/uncond pass)."""
    writer = ReferenceWriter(store, name, overwrite)
    for i, sigma in enumerate(sigmas):
        tensors = slot_tensors(seed, i)
        keys = sorted(tensors)
        half = len(keys) // 2
        for part, chosen in enumerate((keys[:half], keys[half:])):
            writer.put_slot(Slot(i, sigma, 0), part, {k: tensors[k] for k in chosen}, lambda: None)
    writer.finish(family, GENERATION, recording(sigmas), PNG)
    return writer


def make_reference(store: ReferenceStore, name: str, seed: int = 0, overwrite: bool = False, **kw) -> dict:
    writer = start_reference(store, name, seed, overwrite, **kw)
    assert writer.wait(30), "the writer did not finish"
    assert writer.status.state == "saved", writer.status.message
    return store.manifest(name)


def good_and_bad(root) -> ReferenceStore:
    """A store with two references: "good", which stays intact, and "bad", which a test damages."""
    store = ReferenceStore(root)
    make_reference(store, "good", seed=1)
    make_reference(store, "bad", seed=2)
    return store


def forge_first_slot(store: ReferenceStore, name: str, change=None, change_manifest=None) -> str:
    """As a forger would: the first slot file of reference ``name`` rewritten with ``change(tensors)``'s tensors and
    the manifest changed by ``change_manifest(manifest)`` (each optional), then sizes and checksums re-sealed so that
    only the tensor checks can tell. Returns the slot file's name."""
    folder = store.path(name)
    manifest = load_json(folder / MANIFEST)
    entry = manifest["slots"][0]["files"][0]
    if change is not None:
        data = (folder / entry["file"]).read_bytes()
        zstd = entry.get("encoding") == compression.ZSTD
        if zstd:
            data = compression.decompress_bounded(data, entry["raw_bytes"], "a test")
        data = safetensors.torch.save(change(safetensors.torch.load(data)))
        if zstd:
            entry["raw_bytes"], data = len(data), compression.compress(data)
        (folder / entry["file"]).write_bytes(data)
        entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    if change_manifest is not None:
        change_manifest(manifest)
    (folder / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))
    return entry["file"]


def content_hash(path: Path) -> str:
    """sha256 of a file; of the tensors for safetensors (its header order varies from one save to the next)."""
    data = path.read_bytes()
    if path.suffix != ".safetensors":
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    for key, tensor in sorted(safetensors.torch.load(data).items()):
        digest.update(key.encode() + str(tuple(tensor.shape)).encode() + tensor.numpy().tobytes())
    return digest.hexdigest()


def snapshot(folder: Path, with_manifest: bool = False) -> dict[str, str]:
    """File name -> content hash of a reference folder (the manifest holds a date, so it is optional)."""
    return {p.name: content_hash(p) for p in sorted(folder.iterdir()) if with_manifest or p.name != MANIFEST}


def leftovers(root: Path) -> list[str]:
    """Anything in the store's private folders."""
    found = []
    for private in (INCOMING, TRASH):
        folder = Path(root) / private
        if folder.is_dir():
            found += [f"{private}/{p.name}" for p in folder.iterdir()]
    return found


def all_files(root: Path) -> set[Path]:
    return {p for p in Path(root).rglob("*")}


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# -- generations driven with the calls a real host made (recorded trace), without a U-Net --------------------------


def trace_calls(case: str = "t2i_basic", limit: int | None = 24, seed: int = 0, host: str = "reforge"):
    """(q, k, v, extra_options) of the recorded attn1 calls of one case, with random q/k/v of the recorded shapes."""
    trace = load_trace(host, case)
    g = torch.Generator().manual_seed(seed)
    for call in trace["calls"][:limit]:
        eo = {k: v for k, v in call.items() if k not in ("q", "k", "v", "dtype", "pass")}
        eo["sigmas"] = torch.tensor(call["sigmas"]["values"])
        q, k, v = (torch.randn(call[t], generator=g) for t in ("q", "k", "v"))
        yield q, k, v, eo


def percent_to_sigma(p):
    """The ends of the step window only: 0 and 1 (the defaults) are all that these generations use."""
    return 1e9 if p <= 0 else (0.0 if p >= 1 else 1.0)


def pass_context(family: str = "sd15", seed: int = 1) -> PassContext:
    return standalone.context(family, host_attention, percent_to_sigma, seed=seed)


def generate(patch, calls) -> list:
    """What the host's sampler does with an attn1 patch (None: plain): one call per attn1 layer per evaluation."""
    return [(patch or host_attention)(q, k, v, eo) for q, k, v, eo in calls]


def save_generation(store: ReferenceStore, name: str, calls, overwrite: bool = False, profile: str = "exact") -> list:
    """A generation of ``calls`` with Save on, through the library's entry point; its outputs, once saved. The
    ``exact`` profile by default: the fault tests compare a Use with its Save bit for bit."""
    with standalone.start_save(store, name, pass_context(), profile=profile, overwrite=overwrite) as save:
        outputs = generate(save.patch, calls)
        save.finish({}, timeout=30)
    return outputs


def use_generation(store: ReferenceStore, name: str, rfg: float, calls, family: str = "sd15", **settings) -> list:
    """A generation of ``calls`` with Use of ``name`` at ``rfg``, through the library's entry point."""
    return generate(standalone.use_patch(store, name, rfg, pass_context(family), **settings), calls)


def run_generation(run, calls) -> list:
    """A generation the way the WebUI wiring drives a ``RefDropRun``: a problem is a patch that fails when called."""
    return generate(attn1_patch(run, pass_context()), calls)


def attn1_patch(run, ctx):
    """The run's attn1 patch for ``ctx`` as a WebUI installs it: a planning problem becomes the failing patch
    (``run.failing_patch``) that raises it at the first attention call."""
    from lib_refdrop.errors import RefDropError
    from lib_refdrop.run import failing_patch

    try:
        return run.for_pass(ctx).attn1
    except RefDropError as exc:
        return failing_patch(exc)
