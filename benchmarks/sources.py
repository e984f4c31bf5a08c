"""What each reference source costs, as ratios to plain, in one run (interleaved rounds, best of each):

    python -m benchmarks.sources [--rounds 3] [--steps 20] [--size 32]

- stored Use (warm: the reference in the RAM cache), a baked image Use (a stored reference made from an image),
  a live image Use (the image's reference pass before every U-Net call), batch size 1;
- the batch's first image as the reference, batch size 2, against plain at batch size 2;
- baking an image (a Save from an image), against one plain generation.
Small SD1.5-architecture U-Net with random weights, CPU, euler, CFG 7.
"""

from __future__ import annotations

import argparse
import platform
import tempfile

import torch
from PIL import Image

from devmodel.sampling import SCHEDULE, make_conds
from devmodel.unets import SDHost, make_unet
from lib_refdrop import standalone
from lib_refdrop.diffusers import attention
from lib_refdrop.reference.store import ReferenceStore

from .common import sample_with, timed

IMAGE = Image.new("RGB", (8, 8), (200, 40, 40))  # the "VAE" below ignores pixels: its latent is the image


def encoders(host: SDHost, size: int) -> dict:
    latent = torch.randn((1, 4, size, size), generator=torch.Generator().manual_seed(7))
    _, empty = make_conds(host.unet.config.cross_attention_dim)
    return {"encode_image": lambda image: latent, "encode_prompt": lambda text: {"c_crossattn": empty}}


def ctx(host, size, **extra):
    return standalone.context("sd15", attention, SCHEDULE.percent_to_sigma, seed=1, **encoders(host, size),
                              **extra)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=32, help="latent side")
    args = parser.parse_args(argv)
    host = SDHost(make_unet("sd15", "tiny", seed=0))
    one = {"steps": args.steps, "sampler": "euler", "seed": 1, "cfg": 7.0, "height": args.size, "width": args.size}
    two = {**one, "batch_size": 2}
    store = ReferenceStore(tempfile.mkdtemp(prefix="refdrop-sources-"))
    print(f"# sd15/tiny U-Net, latent {args.size}², {args.steps} steps, CFG 7, batch 1 (batch source: 2), "
          f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds")

    with standalone.start_save(store, "stored", ctx(host, args.size)) as save:
        sample_with(host, save.patches, **one)
        save.finish({})

    def bake():
        with standalone.start_save(store, "baked", ctx(host, args.size), image=IMAGE, overwrite=True) as save:
            sample_with(host, save.patches, **one)
            save.finish({})

    bake()

    def use(sample_args, **settings):
        with standalone.start_use(store, rfg=0.3, **settings) as session:
            patches = session.for_pass(ctx(host, args.size))
            return timed(lambda: sample_with(host, patches, **sample_args))[1]

    phases = {
        "plain": lambda: timed(lambda: sample_with(host, None, **one))[1],
        "stored use": lambda: use(one, reference="stored"),
        "baked image use": lambda: use(one, reference="baked"),
        "live image use": lambda: use(one, source="image", image=IMAGE),
        "plain, batch 2": lambda: timed(lambda: sample_with(host, None, **two))[1],
        "batch reference": lambda: use(two, source="batch"),
        "bake an image": lambda: timed(bake)[1],
    }
    for fn in phases.values():  # warm-up: kernels, the RAM cache
        fn()
    best = {label: float("inf") for label in phases}
    for _ in range(args.rounds):
        for label, fn in phases.items():
            best[label] = min(best[label], fn())
    print(f"{'phase':18} {'seconds':>8} {'x plain':>8}")
    for label, seconds in best.items():
        base = best["plain, batch 2"] if label == "batch reference" else best["plain"]
        print(f"{label:18} {seconds:8.3f} {seconds / base:8.3f}")


if __name__ == "__main__":
    main()
