"""Plain, the limit, Save and Use (first, warm, cold) for every storage profile, in one run of interleaved rounds.

    python -m benchmarks.speed              # CPU: small SD1.5-architecture U-Net, latent 32² (a 256² image), 20 steps
    python -m benchmarks.speed --gpu        # CUDA: SDXL architecture, random fp16 weights, 1024², 20 steps
    python -m benchmarks.speed --gpu --device cpu --width tiny --size 16 --steps 3 --rounds 1   # that path on a CPU

Conditions, for every profile of lib_refdrop.reference.profiles.PROFILES (or those ``--profiles`` names):
- plain: no RefDrop; limit: plain with every attn1 computing its attention a second time (``limit.limit_patch``),
  the one extra attention a Use cannot avoid, so that Use / limit is what reading, checking, decoding and
  interpolating the reference cost;
- Save: sampling with Save on (when the background write completes is printed apart);
- first Use: the first Use right after that Save completed, as a user makes it;
- warm Use: the reference in the RAM cache; cold Use: the RAM cache cleared and the files' pages dropped from the
  OS cache, so every slot comes from the disk;
- a `trajectory` reference's first Use bakes the rows its reference pass computes (lib_refdrop/bake.py), so its
  warm and cold Uses are the later Uses, which read them; "unbaked Use" is a Use with baking off, which evaluates
  the reference again (as every Use of it did before baking).
Use timings include the planning (opening the reference). CPU time is counted per thread: the sampler (this
thread) and the others (a Use's loader, a Save's writer, any thread they start), so that work moved off the sampling
thread, or threads spinning beside it, show apart. A round runs, per profile, plain, limit, Save, first,
warm and cold back to back (every other round in the reverse order, the Save still before its first Use), so that
load from other work hits every condition alike; ratios are taken within each such block, and their median over
the rounds is printed with their range.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from devmodel.unets import make_unet
from lib_refdrop.reference.profiles import PROFILES
from lib_refdrop.reference.reader import RAM_CACHE
from lib_refdrop.reference.store import BAKED, ReferenceStore
from lib_refdrop.standalone import identity

from .common import DeviceHost, Peaks, drop_page_cache, folder_bytes, gb, run_limit, run_plain, run_save, run_use

CONDITIONS = ("plain", "limit", "Save", "first Use", "warm Use", "cold Use")
UNBAKED = "unbaked Use"  # a trajectory reference with baking off
RFG = 0.3


def conditions(profile: str) -> tuple[str, ...]:
    return CONDITIONS + ((UNBAKED,) if PROFILES[profile].keep == "trajectory" else ())


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="SDXL at 1024², fp16, on CUDA")
    parser.add_argument("--device", default=None, help="override the device (e.g. cpu, to run the --gpu path here)")
    parser.add_argument("--dtype", default=None, help="float32 | float16 | bfloat16 (default: fp16 --gpu, fp32 CPU)")
    parser.add_argument("--arch", default=None, help="sd15 | sdxl (default: sd15 on CPU, sdxl with --gpu)")
    parser.add_argument("--width", default=None, help="tiny | full U-Net channels (default: tiny CPU, full --gpu)")
    parser.add_argument("--size", type=int, default=None, help="latent side (default 32 CPU, 128 --gpu)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each runs every condition once)")
    parser.add_argument("--profiles", default="", help="comma-separated profiles (default: every profile)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the loader thread comes on top)")
    parser.add_argument("--ram-gb", type=float, default=None,
                        help="RAM cache budget, GB (default: 4, the Settings default; 64 with --gpu, so that warm "
                             "holds a whole SDXL exact reference)")
    parser.add_argument("--store", default=None, help="store folder (default: a temporary folder)")
    args = parser.parse_args(argv)
    unknown = [p for p in filter(None, args.profiles.split(",")) if p not in PROFILES]
    if unknown:
        parser.error(f"unknown profile(s) {', '.join(unknown)}; choose from {', '.join(PROFILES)}")
    return args


class Bench:
    """The U-Net, the store and the timings of one run."""

    def __init__(self, args: argparse.Namespace):
        self.device = torch.device(args.device or ("cuda" if args.gpu else "cpu"))
        self.arch = args.arch or ("sdxl" if args.gpu else "sd15")
        width = args.width or ("full" if args.gpu else "tiny")
        self.size = args.size or (128 if args.gpu else 32)
        self.dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if args.gpu else torch.float32)
        self.host = DeviceHost(make_unet(self.arch, width, seed=0).to(device=self.device, dtype=self.dtype))
        self.sample_args = {"steps": args.steps, "sampler": "euler", "seed": 1, "cfg": 7.0,
                            "height": self.size, "width": self.size}
        self.store = ReferenceStore(args.store or tempfile.mkdtemp(prefix="refdrop-bench-"))
        self.describe = (f"{self.arch}/{width} U-Net, latent {self.size}² ({self.size * 8}² image), {args.steps} "
                         f"steps, Euler, CFG 7, c = {RFG}, {str(self.dtype).removeprefix('torch.')}, {self.device} "
                         f"({self._device_name()}), {torch.get_num_threads()} torch threads")
        self.runs: dict[tuple[str, str], list[dict]] = defaultdict(list)  # (profile, condition) -> runs
        self.complete_s: dict[str, list[float]] = defaultdict(list)
        self.bytes: dict[str, int] = {}

    def _device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return platform.processor() or platform.machine() or "cpu"

    def name(self, profile: str) -> str:
        return f"bench-{profile}"

    def measure(self, profile: str, condition: str) -> dict:
        fn = self._condition(profile, condition)
        cpu, sampler = time.process_time(), time.thread_time()
        with Peaks() as peaks:
            seconds = fn()
        sampler = time.thread_time() - sampler
        cpu = time.process_time() - cpu - peaks.own_cpu  # every thread's, the memory sampling's left out
        run = {"s": seconds, "cpu": cpu, "sampler": sampler, "others": cpu - sampler, "host": peaks.host_peak,
               "gpu": peaks.gpu_peak}
        self.runs[(profile, condition)].append(run)
        return run

    def _condition(self, profile: str, condition: str):
        name, args = self.name(profile), (self.host, self.store)
        use = lambda: run_use(*args, name, self.arch, RFG, self.sample_args, bake_trajectories=True)[1]  # noqa: E731
        if condition == UNBAKED:
            return lambda: run_use(*args, name, self.arch, RFG, self.sample_args, bake_trajectories=False)[1]
        if condition == "plain":
            return lambda: run_plain(self.host, self.sample_args)[1]
        if condition == "limit":
            return lambda: run_limit(self.host, self.sample_args)[1]
        if condition == "Save":
            return lambda: self._save(profile)
        if condition == "cold Use":
            RAM_CACHE.clear()
            drop_page_cache(Path(self.store.path(name)))
            drop_page_cache(self.store.root / BAKED / identity(self.store, name))  # a trajectory's baked rows
        return use

    def _save(self, profile: str) -> float:
        _, seconds, complete = run_save(self.host, self.store, self.name(profile), self.arch, profile,
                                        self.sample_args)
        self.complete_s[profile].append(complete)
        self.bytes[profile] = folder_bytes(Path(self.store.path(self.name(profile))))
        return seconds

    def baked_bytes(self, profile: str) -> int | None:
        """The bytes of the rows the first Use of ``profile``'s reference baked, None where none are baked."""
        folder = self.store.root / BAKED / identity(self.store, self.name(profile))
        return folder_bytes(folder) if folder.is_dir() else None

    def block(self, profile: str, reverse: bool) -> None:
        """Every condition once for ``profile``; ratios to this block's plain and limit."""
        order = list(conditions(profile))
        if reverse:  # the Save still before its first Use
            order = [c for c in order if c not in ("plain", "limit")] + ["limit", "plain"]
        runs = {condition: self.measure(profile, condition) for condition in order}
        for run in runs.values():
            run["x plain"] = run["s"] / runs["plain"]["s"]
            run["/ limit"] = run["s"] / runs["limit"]["s"]
            run["cpu / limit"] = run["cpu"] / runs["limit"]["cpu"]  # all threads: less swayed by others' load
            run["sampler / limit"] = run["sampler"] / runs["limit"]["sampler"]


def plain_equals_limit(bench: Bench) -> bool:
    plain = run_plain(bench.host, bench.sample_args)[0]
    return bool(torch.equal(plain, run_limit(bench.host, bench.sample_args)[0]))


def _spread(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    return f"{med:{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})" if len(values) > 1 else f"{med:{fmt}}"


def report(bench: Bench, profiles: list[str]) -> None:
    print("\n| profile | condition | seconds, median (range) | × plain | Use / limit | CPU time / limit's "
          "| sampler thread's CPU / limit's | other threads' CPU, s | peak host RAM | peak GPU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    everywhere = {c: [r for p in profiles for r in bench.runs[(p, c)]] for c in ("plain", "limit")}
    for condition, runs in everywhere.items():
        print(f"| all | {condition} | {_spread([r['s'] for r in runs], '.2f')} | "
              f"{_spread([r['x plain'] for r in runs], '.3f')} | {_spread([r['/ limit'] for r in runs], '.3f')} | "
              f"{_spread([r['cpu / limit'] for r in runs], '.3f')} | "
              f"{_spread([r['sampler / limit'] for r in runs], '.3f')} | {_spread([r['others'] for r in runs], '.2f')} "
              f"| {gb(max(r['host'] for r in runs))} | {gb(max(r['gpu'] for r in runs))} |")
    for profile in profiles:
        for condition in conditions(profile)[2:]:
            runs = bench.runs[(profile, condition)]
            use = condition != "Save"
            ratios = [_spread([r[key] for r in runs], ".3f") if use else "–"
                      for key in ("/ limit", "cpu / limit", "sampler / limit")]
            print(f"| `{profile}` | {condition} | {_spread([r['s'] for r in runs], '.2f')} | "
                  f"{_spread([r['x plain'] for r in runs], '.3f')} | {' | '.join(ratios)} | "
                  f"{_spread([r['others'] for r in runs], '.2f')} | "
                  f"{gb(max(r['host'] for r in runs))} | {gb(max(r['gpu'] for r in runs))} |")
    print("\n| profile | on disk | write complete after sampling, s (median, worst) | baked by its first Use |")
    print("|---|---|---|---|")
    for profile in profiles:
        done, baked = bench.complete_s[profile], bench.baked_bytes(profile)
        print(f"| `{profile}` | {gb(bench.bytes[profile])} | {statistics.median(done):.2f}, {max(done):.2f} | "
              f"{'–' if baked is None else gb(baked)} |")


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    profiles = [p for p in filter(None, args.profiles.split(","))] or list(PROFILES)
    bench = Bench(args)
    ram_gb = args.ram_gb if args.ram_gb is not None else (64.0 if args.gpu else 4.0)
    RAM_CACHE.set_budget(int(ram_gb * 1e9))
    print(f"# {bench.describe}; RAM cache {ram_gb:g} GB; {args.rounds} interleaved rounds; profiles "
          f"{', '.join(profiles)}; load average before {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for profile in profiles:  # warm-up, untimed: kernels, allocator, each profile's code paths
        bench._save(profile)
        for bake in (True, False) if UNBAKED in conditions(profile) else (True,):
            run_use(bench.host, bench.store, bench.name(profile), bench.arch, RFG, bench.sample_args,
                    bake_trajectories=bake)
    bench.runs.clear()
    bench.complete_s.clear()
    print(f"limit = plain bit for bit: {'yes' if plain_equals_limit(bench) else 'NO'}")
    for r in range(args.rounds):
        for i in range(len(profiles)):
            profile = profiles[(i + r) % len(profiles)]
            bench.block(profile, reverse=r % 2 == 1)
        print(f"round {r + 1} done; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    report(bench, profiles)


if __name__ == "__main__":
    main()
