"""What a shared reference file costs, and whether a trajectory stored in half precision stays exact.

    python -m benchmarks.share [--seeds 12] [--rfg 0.6]

- The bytes of a ``trajectory`` file (``<name>.refdrop.safetensors``) at SD1.5 512² and SDXL 1024², 20 steps, CFG,
  with its tensors in float16 (a host computing in half precision) and float32 (a CPU, ``--all-in-fp32``):
  ``trajectory_file_bytes``, which README "Share a character" quotes (tests/test_share_sizes.py checks both).
- On the trained character model (charmodel; it computes in float32 on the CPU, so its trajectories are float32): a
  trajectory reference saved and exported; the same file with every tensor rounded to float16 (what a file stored
  in half precision gives a float32 Use); a Use of each at the Save's own seed and at ``--seeds`` other seeds, c =
  ``--rfg``: the largest pixel difference (0-255) between the two, the share of pixels that differ, and how far
  each is from the Save image at its own seed (a trajectory reproduces it exactly).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import safetensors.torch
import torch

from lib_refdrop.reference import bundle
from lib_refdrop.reference.manifest import seal_manifest, sha256_bytes
from lib_refdrop.reference.store import MANIFEST, ReferenceStore

from .profiles import TRAJECTORY_CONDITIONING

LATENT_CHANNELS = 4      # SD1.5 and SDXL
LATENT_SCALE = 8         # pixels per latent cell
CFG_CHUNKS = 2           # uncond0, cond0
STEPS = 20
# What a file holds besides its tensors: the safetensors headers of the file and of each slot file, the manifest
# (SDXL: 70 layers) and the preview PNG. Measured on exported files: see ``overhead_bytes`` and the test.
SIZES = {"SD1.5 512²": ("sd15", 512), "SDXL 1024²": ("sdxl", 1024)}
ITEMSIZES = {"fp16": 2, "fp32": 4}


def trajectory_tensor_bytes(latent_values: int, steps: int, conditioning_values: int, chunks: int,
                            itemsize: int) -> int:
    """The tensor bytes of a trajectory: one latent (``latent_values`` values) per sampled step, and the conditioning
    (``conditioning_values`` per chunk) once, ``itemsize`` bytes a value."""
    return itemsize * (latent_values * steps + conditioning_values * chunks)


def trajectory_file_bytes(arch: str, side: int, itemsize: int, steps: int = STEPS) -> int:
    """The tensor bytes of a ``trajectory`` file of a ``side``² generation of ``arch`` (``sd15``, ``sdxl``) with
    CFG: a 4-channel latent a step, 77 tokens of text conditioning (and SDXL's pooled vector) per chunk."""
    cells = (side // LATENT_SCALE) ** 2
    return trajectory_tensor_bytes(LATENT_CHANNELS * cells, steps, sum(TRAJECTORY_CONDITIONING[arch]), CFG_CHUNKS,
                                   itemsize)


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def size_table() -> str:
    rows = ["| generation | fp16 | fp32 |", "|---|---|---|"]
    for label, (arch, side) in SIZES.items():
        rows.append(f"| {label} | " + " | ".join(megabytes(trajectory_file_bytes(arch, side, size))
                                                 for size in ITEMSIZES.values()) + " |")
    return "\n".join(rows)


def tensors_of_file(data: bytes) -> dict[str, dict[str, torch.Tensor]]:
    """The tensors of every slot file a reference file holds."""
    with tempfile.NamedTemporaryFile(suffix=bundle.SUFFIX) as fh:
        fh.write(data)
        fh.flush()
        with safetensors.safe_open(fh.name, "pt") as opened:
            names = [k for k in opened.keys() if k.endswith(".safetensors")]
            return {k: safetensors.torch.load(opened.get_tensor(k).numpy().tobytes()) for k in names}


def overhead_bytes(data: bytes) -> int:
    """What a reference file holds besides its slot files' tensors and its pictures."""
    tensors = sum(t.numel() * t.element_size() for slot in tensors_of_file(data).values() for t in slot.values())
    with tempfile.NamedTemporaryFile(suffix=bundle.SUFFIX) as fh:
        fh.write(data)
        fh.flush()
        with safetensors.safe_open(fh.name, "pt") as opened:
            pictures = sum(opened.get_tensor(k).numel() for k in opened.keys() if k in bundle.PICTURES)
    return len(data) - tensors - pictures


def rounded_copy(store: ReferenceStore, name: str, copy: str, dtype: torch.dtype) -> int:
    """Reference ``copy``: ``name`` with every tensor rounded to ``dtype`` and stored back in its own dtype (what a file
    stored in ``dtype`` gives a Use that computes in the Save's dtype); returns the bytes the slot files would have
    stored in ``dtype``."""
    shutil.copytree(store.path(name), store.root / copy)
    folder = store.root / copy
    manifest = json.loads((folder / MANIFEST).read_text())
    narrow = 0
    for slot in manifest["slots"]:
        for entry in slot["files"]:
            tensors = safetensors.torch.load_file(str(folder / entry["file"]))
            narrow += len(safetensors.torch.save({k: t.to(dtype) for k, t in tensors.items()}))
            data = safetensors.torch.save({k: t.to(dtype).to(t.dtype) for k, t in tensors.items()})
            (folder / entry["file"]).write_bytes(data)
            entry.update(bytes=len(data), sha256=sha256_bytes(data))
    manifest["name"] = copy
    (folder / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))
    return narrow


def pixels(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1) * 127.5).round()


def measure_half(seeds: int, rfg: float) -> dict:
    from charmodel.data import POSES
    from charmodel.sampling import CharPipeline

    pipe = CharPipeline.load()
    with tempfile.TemporaryDirectory() as folder:
        store = ReferenceStore(Path(folder) / "store")
        saved = pipe.save_reference(store, "ref", "up", 10_000, profile="trajectory")
        exported = bundle.export_reference(store, "ref", folder).read_bytes()
        half_slot_bytes = rounded_copy(store, "ref", "ref-fp16", torch.float16)
        full_slot_bytes = sum(e["bytes"] for s in store.manifest("ref")["slots"] for e in s["files"])
        own = {name: pipe.use_reference(store, name, rfg, ["up"], [10_000])[0] for name in ("ref", "ref-fp16")}
        poses = [POSES[i % len(POSES)] for i in range(seeds)]
        other = {name: pipe.use_reference(store, name, rfg, poses, list(range(seeds))) for name in ("ref", "ref-fp16")}
    diff = (pixels(other["ref"]) - pixels(other["ref-fp16"])).abs()
    return {
        "file": len(exported), "file_fp16": len(exported) - full_slot_bytes + half_slot_bytes,
        "save_vs_fp32": (pixels(own["ref"]) - pixels(saved)).abs().max().item(),
        "save_vs_fp16": (pixels(own["ref-fp16"]) - pixels(saved)).abs().max().item(),
        "max_pixel": diff.max().item(), "share": (diff > 0).float().mean().item(),
        "max_value": (other["ref"] - other["ref-fp16"]).abs().max().item(), "images": seeds,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--rfg", type=float, default=0.6)
    args = parser.parse_args(argv)
    print("A trajectory file's tensors, 20 steps, CFG:")
    print(size_table())
    result = measure_half(args.seeds, args.rfg)
    print(f"\ncharmodel (float32), c = {args.rfg}: file {result['file']} B as saved (float32), "
          f"{result['file_fp16']} B with float16 tensors")
    print(f"Use at the Save's seed vs the Save image: max pixel difference {result['save_vs_fp32']:g} (float32 file), "
          f"{result['save_vs_fp16']:g} (float16-rounded)")
    print(f"Use at {result['images']} other seeds, float16-rounded vs float32 file: max pixel difference "
          f"{result['max_pixel']:g} of 255, {100 * result['share']:.2f} % of pixels differ, max value difference "
          f"{result['max_value']:.2e}")


if __name__ == "__main__":
    main()
