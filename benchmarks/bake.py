"""What a trajectory reference's baked rows keep of its effect, at the first Use's steps and at others.

    python -m benchmarks.bake [--steps 20] [--first 20,30] [--later 12,20,30] [--seeds 3] [--rfg 0.3] [--size 16]

A trajectory reference is saved at ``--steps`` (Euler); for each step count F of ``--first``, a store of its own
has the reference's first Use run at F steps, which bakes the rows (lib_refdrop/bake.py); a later Use at L steps
(``--later``) then reads them (checked: it runs no reference pass). Effect kept at other seeds against the
trajectory's own Use at the same settings (baking off: the reference evaluated again, exactly):
``1 - |out_baked - out_trajectory| / |out_trajectory - out_plain|``, and beside it the same for a `lean` Save of the
reference's generation. Tiny SD1.5-architecture U-Net with random weights, CFG 7.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from devmodel.unets import SDHost, make_unet
from lib_refdrop.reference.store import BAKED, ReferenceStore
from lib_refdrop.reference.writer import pending_bake
from lib_refdrop.standalone import identity

from .common import run_plain, run_save, run_use


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sd15")
    parser.add_argument("--size", type=int, default=16, help="latent side")
    parser.add_argument("--steps", type=int, default=20, help="the Save's steps")
    parser.add_argument("--first", default="20,30", help="steps of the first Use, which bakes")
    parser.add_argument("--later", default="12,20,30", help="steps of the later Uses")
    parser.add_argument("--seeds", type=int, default=3, help="later Uses at seeds 2, 3, ...")
    parser.add_argument("--rfg", type=float, default=0.3)
    return parser.parse_args(argv)


def effect_kept(out, exact, plain) -> float:
    return 1 - (out - exact).norm().item() / (exact - plain).norm().item()


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def main(argv=None) -> None:
    args = parse(argv)
    host = SDHost(make_unet(args.arch, "tiny", seed=0))
    base = {"sampler": "euler", "cfg": 7.0, "height": args.size, "width": args.size}
    root = Path(tempfile.mkdtemp(prefix="refdrop-bake-"))
    saved = ReferenceStore(root / "saved")
    run_save(host, saved, "t", args.arch, "trajectory", {**base, "steps": args.steps, "seed": 1})
    run_save(host, saved, "lean", args.arch, "lean", {**base, "steps": args.steps, "seed": 1})
    firsts, laters = [int(n) for n in args.first.split(",")], [int(n) for n in args.later.split(",")]
    baked = {}
    for first in firsts:  # each bake in a store of its own
        shutil.copytree(saved.root, root / f"first-{first}")
        store = baked[first] = ReferenceStore(root / f"first-{first}")
        run_use(host, store, "t", args.arch, args.rfg, {**base, "steps": first, "seed": 1}, bake_trajectories=True)
        writer = pending_bake(store, identity(store, "t"))
        if writer is not None:
            writer.wait(300)
        if not (store.root / BAKED / identity(store, "t")).is_dir():
            raise SystemExit(f"the first Use at {first} steps baked nothing")
    print(f"# {args.arch}/tiny U-Net, random weights, latent {args.size}², Euler, CFG 7, c = {args.rfg}; trajectory "
          f"saved at {args.steps} steps; later Uses at seeds 2..{args.seeds + 1}; effect kept against the "
          "trajectory's own Use, median (range)")
    print("\n| later Use, steps | " + " | ".join(f"baked by a first Use at {f} steps" for f in firsts)
          + f" | `lean` Save at {args.steps} steps |")
    print("|---|" + "---|" * (len(firsts) + 1))
    for later in laters:
        kept: dict[object, list[float]] = {key: [] for key in [*firsts, "lean"]}
        for seed in range(2, args.seeds + 2):
            sample_args = {**base, "steps": later, "seed": seed}
            plain = run_plain(host, sample_args)[0]
            exact = run_use(host, saved, "t", args.arch, args.rfg, sample_args)[0]
            kept["lean"].append(effect_kept(run_use(host, saved, "lean", args.arch, args.rfg, sample_args)[0],
                                            exact, plain))
            for first in firsts:
                calls = host.n_forwards
                out = run_use(host, baked[first], "t", args.arch, args.rfg, sample_args, bake_trajectories=True)[0]
                if host.n_forwards - calls != later:
                    raise SystemExit("a later Use ran the reference pass: it did not read the baked rows")
                kept[first].append(effect_kept(out, exact, plain))
        print(f"| {later} | " + " | ".join(_spread(values) for values in kept.values()) + " |")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
