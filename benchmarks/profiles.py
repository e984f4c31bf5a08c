"""Storage profiles: bytes, same-seed reproduction error and the share of the RFG effect kept.

    python -m benchmarks.profiles [--arch sd15] [--size 16] [--steps 8] [--seeds 3] [--rfg 0.3]

For each profile P, on a hostsim U-Net with random weights (or the toy model, see toymodel/):
- bytes of a reference at SD1.5 512² and SDXL 1024² (20 steps, CFG, fp16 compute), from the real layer shapes;
- latent PSNR of Use(P) against the Save image at the Save's own seed and settings (exact gives inf);
- effect kept at other seeds: 1 - |out_P - out_exact| / |out_exact - out_plain|.
"""

from __future__ import annotations

import argparse
import math
import tempfile

import torch

from lib_refdrop.reference.profiles import PROFILES, Profile
from lib_refdrop.reference.store import ReferenceStore
from tests.support.hostsim import AttnHost, layer_map, make_unet

from .common import gb, run_plain, run_save, run_use

SHAPES = {"sd15 512²": ("sd15", 64), "sdxl 1024²": ("sdxl", 128)}


def reference_bytes(profile: Profile, arch: str, latent: int, steps: int = 20, chunks: int = 2) -> int:
    """Bytes of one reference with this profile, from the architecture's real attn1 layer shapes (fp16)."""
    if arch not in _LAYERS:
        with torch.device("meta"):  # the layer shapes only: no weights, no memory
            unet = make_unet(arch, "full", seed=0)
        _LAYERS[arch] = [(layer.level, layer.n_heads * layer.dim_head) for layer in layer_map(unet)]
    per_step = 0
    for level, width in _LAYERS[arch]:
        side = latent // 2**level
        row = torch.zeros(side * side, width, dtype=torch.float16)
        stored = profile.encode_row("layer", "cond0", "k", row)
        per_step += sum(t.numel() * t.element_size() for t in stored.values())
    kept_steps = sum(profile.keeps_sigma(i) for i in range(steps))
    return per_step * 2 * chunks * kept_steps  # K and V


_LAYERS: dict[str, list] = {}


def psnr(out, target) -> float:
    mse = (out - target).pow(2).mean().item()
    peak = (target.max() - target.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sd15")
    parser.add_argument("--size", type=int, default=16, help="latent side")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3, help="other seeds for the effect kept")
    parser.add_argument("--rfg", type=float, default=0.3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    host = AttnHost(make_unet(args.arch, "tiny", seed=0))
    store = ReferenceStore(tempfile.mkdtemp(prefix="refdrop-profiles-"))
    base = {"steps": args.steps, "sampler": "euler", "cfg": 7.0, "height": args.size, "width": args.size}
    family = args.arch
    saved = {}
    for name in PROFILES:
        saved[name] = run_save(host, store, name, family, name, {**base, "seed": 1})[0]
    exact_other = {s: run_use(host, store, "exact", family, args.rfg, {**base, "seed": s})[0]
                   for s in range(2, 2 + args.seeds)}
    plain_other = {s: run_plain(host, {**base, "seed": s})[0] for s in exact_other}

    raw = {label: reference_bytes(PROFILES["exact"], arch, latent) for label, (arch, latent) in SHAPES.items()}
    print(f"# {args.arch}/tiny random weights, latent {args.size}², {args.steps} steps, euler, CFG 7, c={args.rfg}; "
          f"bytes from the full architectures at 20 steps, fp16")
    print(f"{'profile':9} {'sd15 512²':>10} {'sdxl 1024²':>11} {'vs raw':>7} {'PSNR same seed':>15} "
          f"{'PSNR c=1':>9} {'effect kept':>12}")
    for name, profile in PROFILES.items():
        sizes = {label: reference_bytes(profile, arch, latent) for label, (arch, latent) in SHAPES.items()}
        same = psnr(run_use(host, store, name, family, args.rfg, {**base, "seed": 1})[0], saved["exact"])
        same_c1 = psnr(run_use(host, store, name, family, 1.0, {**base, "seed": 1})[0], saved["exact"])
        kept = []
        for s, exact in exact_other.items():
            out = run_use(host, store, name, family, args.rfg, {**base, "seed": s})[0]
            kept.append(1 - ((out - exact).norm() / (exact - plain_other[s]).norm()).item())
        ratio = raw["sdxl 1024²"] / sizes["sdxl 1024²"]
        print(f"{name:9} {gb(sizes['sd15 512²']):>10} {gb(sizes['sdxl 1024²']):>11} {ratio:6.1f}x "
              f"{same:12.1f} dB {same_c1:6.1f} dB {100 * sum(kept) / len(kept):10.1f} %")


if __name__ == "__main__":
    main()
