"""Plain vs Save vs Use (warm: reference in the RAM cache; cold: read from disk) in one run.

    python -m benchmarks.speed                 # CPU: small SD1.5-architecture U-Net (any machine)
    python -m benchmarks.speed --gpu           # GPU: SDXL-architecture random fp16 weights at 1024², 20 steps

Prints ratios to plain, bytes on disk, peak host RAM and peak GPU memory per phase.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch

from lib_refdrop.reference.reader import RAM_CACHE
from lib_refdrop.reference.store import ReferenceStore
from tests.support.hostsim import AttnHost, make_unet

from .common import Peaks, drop_page_cache, folder_bytes, gb, run_plain, run_save, run_use


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="SDXL at 1024² on CUDA (fp16)")
    parser.add_argument("--arch", default=None, help="sd15 | sdxl (default: sd15 on CPU, sdxl on GPU)")
    parser.add_argument("--width", default=None, help="tiny | full U-Net channels (default: tiny CPU, full GPU)")
    parser.add_argument("--size", type=int, default=None, help="latent side (default 32 CPU, 128 GPU)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile", default="exact")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per phase (best is reported)")
    parser.add_argument("--store", default=None, help="store folder (default: a temporary folder)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.gpu else "cpu")
    arch = args.arch or ("sdxl" if args.gpu else "sd15")
    width = args.width or ("full" if args.gpu else "tiny")
    size = args.size or (128 if args.gpu else 32)
    dtype = torch.float16 if args.gpu else torch.float32
    unet = make_unet(arch, width, seed=0).to(device=device, dtype=dtype)
    host = AttnHost(unet)
    sample_args = {"steps": args.steps, "sampler": "euler", "seed": 1, "cfg": 7.0, "height": size, "width": size}
    store = ReferenceStore(args.store or tempfile.mkdtemp(prefix="refdrop-bench-"))
    print(f"# {arch}/{width} U-Net, latent {size}x{size} ({size * 8}² image), {args.steps} steps, CFG, "
          f"{dtype}, {device} ({torch.cuda.get_device_name() if args.gpu else platform.processor() or 'cpu'}), "
          f"profile {args.profile}")

    run_plain(host, sample_args)  # warm-up (kernels, allocator)
    rows = []

    def phase(label, fn, setup=None):
        best = None
        for _ in range(args.repeats):
            if setup:
                setup()
            with Peaks() as peaks:
                seconds = fn()
            best = seconds if best is None else min(best, seconds)
        rows.append((label, best, peaks.host_peak, peaks.gpu_peak))
        return best

    plain_s = phase("plain", lambda: run_plain(host, sample_args)[1])
    write_s = []

    def save():
        _, seconds, complete = run_save(host, store, "bench", arch, args.profile, sample_args)
        write_s.append(complete)
        return seconds

    phase("save", save)
    folder = Path(store.path("bench"))
    size_on_disk = folder_bytes(folder)
    RAM_CACHE.set_budget(max(RAM_CACHE.budget, 2 * size_on_disk))
    run_use(host, store, "bench", arch, 0.3, sample_args)  # fill the RAM cache

    phase("use warm", lambda: run_use(host, store, "bench", arch, 0.3, sample_args)[1])

    def cold():
        RAM_CACHE.clear()
        drop_page_cache(folder)

    phase("use cold", lambda: run_use(host, store, "bench", arch, 0.3, sample_args)[1], setup=cold)

    print(f"reference on disk: {gb(size_on_disk)}; complete {max(write_s):.2f} s after sampling ended (worst)")
    print(f"{'phase':10} {'seconds':>9} {'x plain':>8} {'peak host RAM':>14} {'peak GPU':>10}")
    for label, seconds, host_peak, gpu_peak in rows:
        print(f"{label:10} {seconds:9.2f} {seconds / plain_s:8.3f} {gb(host_peak):>14} {gb(gpu_peak):>10}")


if __name__ == "__main__":
    main()
