"""Storage profiles: bytes, same-seed reproduction error and the share of the RFG effect kept.

    python -m benchmarks.profiles [--arch sd15] [--size 16] [--steps 8] [--seeds 3] [--rfg 0.3] [--only a,b]
    python -m benchmarks.profiles --zstd        # what zstd gains on each stored form (random weights, toy model)
    python -m benchmarks.profiles --svd-cost    # what the low-rank factorisation costs a Save per step (CPU)
    python -m benchmarks.profiles --spread 4    # the test's measures over 4 seed pairs (tests/test_profiles.py)

For each profile P (the offered ones and ``CANDIDATES``), on a hostsim U-Net with random weights:
- bytes of a reference at SD1.5 512² and SDXL 1024² (20 steps, CFG, fp16 compute), from the real layer shapes
  (``Profile.row_bytes_bound``: for low rank the profile's largest rank, which random weights always reach); for
  a zstd profile, those bytes divided by the ratio zstd reaches on this run's exact reference re-encoded with P at
  fp16 (the hosts' compute dtype; the test model computes in fp32, whose files, also shown, compress less);
- latent PSNR of Use(P) against the exact Save image at the Save's own seed and settings, c = 0.3 and c = 1
  (exact gives inf);
- effect kept at other seeds: 1 - |out_P - out_exact| / |out_exact - out_plain|.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import safetensors.torch
import torch

from lib_refdrop.reference import compression, lowrank
from lib_refdrop.reference.profiles import PROFILES, Profile, get_profile
from lib_refdrop.reference.reader import ReferenceReader
from lib_refdrop.reference.store import ReferenceStore
from tests.support.hostsim import AttnHost, layer_map, make_unet

from .candidates import CANDIDATES, offering
from .common import gb, run_plain, run_save, run_use

SHAPES = {"sd15 512²": ("sd15", 64), "sdxl 1024²": ("sdxl", 128)}
CFG_CHUNKS = ("uncond0", "cond0")
ALL_PROFILES = {**PROFILES, **CANDIDATES}


def layer_shapes(arch: str) -> list[tuple[int, int]]:
    """(level, width) of every attn1 layer of the full architecture."""
    if arch not in _LAYERS:
        with torch.device("meta"):  # the layer shapes only: no weights, no memory
            unet = make_unet(arch, "full", seed=0)
        _LAYERS[arch] = [(layer.level, layer.n_heads * layer.dim_head) for layer in layer_map(unet)]
    return _LAYERS[arch]


_LAYERS: dict[str, list] = {}


def reference_bytes(profile: Profile, arch: str, latent: int, steps: int = 20, chunks=CFG_CHUNKS) -> int:
    """Bytes of one reference with this profile (before zstd), from the architecture's real attn1 layer shapes
    (fp16); for low rank at the profile's largest rank."""
    kept_steps = sum(profile.keeps_sigma(i) for i in range(steps))
    kept_chunks = sum(profile.keeps_chunk(c) for c in chunks)
    if profile.kept.evaluated_again:  # a 4-channel latent a step, and the prompt's conditioning once a chunk
        return 2 * (4 * latent * latent * kept_steps + kept_chunks * sum(TRAJECTORY_CONDITIONING[arch]))
    per_step = sum(profile.row_bytes_bound((latent // 2**level) ** 2, width) for level, width in layer_shapes(arch))
    return per_step * len(profile.tensors) * kept_chunks * kept_steps


# Values of one row of each conditioning tensor a trajectory keeps (fp16): c_crossattn 77 tokens x the text width,
# and SDXL's pooled text + size vector ``y``.
TRAJECTORY_CONDITIONING = {"sd15": (77 * 768,), "sdxl": (77 * 2048, 2816)}


def psnr(out, target) -> float:
    mse = (out - target).pow(2).mean().item()
    peak = (target.max() - target.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def zstd_ratio(store: ReferenceStore, name: str) -> float:
    """Bytes before / after zstd over every slot file of a reference saved with a zstd profile."""
    entries = [e for slot in store.manifest(name)["slots"] for e in slot["files"]]
    return sum(e["raw_bytes"] for e in entries) / sum(e["bytes"] for e in entries)


def stored_tensors(store: ReferenceStore, name: str) -> list[dict[str, torch.Tensor]]:
    """The stored tensors of every slot file of a reference, as read by Use (checksum, zstd)."""
    opened = store.open(name)
    try:
        reader = ReferenceReader(opened)
        try:
            return [reader._load_file(entry) for slot in opened.manifest["slots"] for entry in slot["files"]]
        finally:
            reader.close()
    finally:
        opened.close()


def stored_bytes_share(store: ReferenceStore, name: str) -> float:
    """Tensor bytes of a saved reference / the profile's bound for them (below 1 where a low rank kept its energy
    with fewer components than the bound allows)."""
    manifest = store.manifest(name)
    profile = get_profile(manifest["profile"])
    itemsize = torch.empty((), dtype=getattr(torch, manifest["dtype"])).element_size()
    bound = sum(profile.row_bytes_bound(layer["tokens"], layer["n_heads"] * layer["dim_head"], itemsize)
                for layer in manifest["layers"].values())
    bound *= len(profile.tensors) * len(manifest["chunks"]) * len(manifest["slots"])
    stored = sum(t.numel() * t.element_size() for file in stored_tensors(store, name) for t in file.values())
    return stored / bound


def measure(host, store, family, base, rfg, seeds, names) -> dict[str, dict]:
    """Per profile: PSNR at the Save's seed (c = rfg and c = 1) and the effect kept at ``seeds``."""
    results = {}
    saved = {name: run_save(host, store, name, family, name, {**base, "seed": 1})[0] for name in names}
    exact_other = {s: run_use(host, store, "exact", family, rfg, {**base, "seed": s})[0] for s in seeds}
    plain_other = {s: run_plain(host, {**base, "seed": s})[0] for s in seeds}
    fp16_rows = saved_rows(store, "exact")
    for name in names:
        same = psnr(run_use(host, store, name, family, rfg, {**base, "seed": 1})[0], saved["exact"])
        same_c1 = psnr(run_use(host, store, name, family, 1.0, {**base, "seed": 1})[0], saved["exact"])
        kept = []
        for s in seeds:
            out = run_use(host, store, name, family, rfg, {**base, "seed": s})[0]
            kept.append(1 - ((out - exact_other[s]).norm() / (exact_other[s] - plain_other[s]).norm()).item())
        zstd = get_profile(name).file_encoding == "zstd"
        results[name] = {"psnr": same, "psnr_c1": same_c1, "kept": kept,
                         "zstd": zstd_ratios(fp16_rows, {name: get_profile(name)})[name] if zstd else 1.0,
                         "zstd_files": zstd_ratio(store, name) if zstd else 1.0,
                         "fill": stored_bytes_share(store, name) if get_profile(name).low_rank else 1.0}
    return results


def print_table(results: dict[str, dict], header: str) -> None:
    raw = {label: reference_bytes(PROFILES["exact"], arch, latent) for label, (arch, latent) in SHAPES.items()}
    print(header)
    print("| profile | SD1.5 512² | SDXL 1024² | vs raw fp16 | PSNR c=0.3 / c=1 | effect kept (min-max) | "
          "zstd ratio fp16 (saved files) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        profile = get_profile(name)
        sizes = {label: reference_bytes(profile, arch, latent) / r["zstd"]
                 for label, (arch, latent) in SHAPES.items()}
        kept = r["kept"]
        if not profile.tensors:  # no layer rows (a trajectory): its bytes are not a function of the layer shapes
            bytes_cells = "- | - | -"
        else:
            bytes_cells = (f"{gb(sizes['sd15 512²'])} | {gb(sizes['sdxl 1024²'])} | "
                           f"{raw['sdxl 1024²'] / sizes['sdxl 1024²']:.1f}×")
        print(f"| `{name}` | {bytes_cells} | {r['psnr']:.1f} / {r['psnr_c1']:.1f} dB | "
              f"{100 * statistics.mean(kept):.1f} % ({100 * min(kept):.1f}-{100 * max(kept):.1f}) | "
              + (f"{r['zstd']:.3f} ({r['zstd_files']:.3f}) |" if profile.file_encoding == "zstd" else "- |"))


# -- what zstd gains on each stored form ------------------------------------------------------------------------

FORMS = {  # label -> profile whose encode_row gives the form (no sigma or chunk selection: rows only)
    "fp16 K/V": Profile("f", storage="native"),
    "int8 codes + scales": Profile("i", storage="int8"),
    "fp8 codes + scales": Profile("e", storage="fp8"),
    "low-rank fp16 factors (budget 1/4)": Profile("l", rank_budget=0.25),
    "low-rank int8 factors (budget 1/2)": Profile("li", storage="int8", rank_budget=0.5),
}


def saved_rows(store: ReferenceStore, name: str) -> list[tuple[str, torch.Tensor]]:
    """Every K/V row of a reference saved with ``exact``, as fp16 (what the hosts compute in)."""
    opened = store.open(name)
    try:
        rows = []
        for slot in opened.manifest["slots"]:
            for entry in slot["files"]:
                rows += [(key, t.half()) for key, t in safetensors.torch.load(opened.read(entry)).items()]
        return rows
    finally:
        opened.close()


def zstd_ratios(rows: list[tuple[str, torch.Tensor]], forms: dict[str, Profile] = FORMS) -> dict[str, float]:
    """zstd's ratio on the slot files each stored form makes of ``rows`` (one file per 64 rows, like a slot)."""
    ratios = {}
    for label, profile in forms.items():
        raw = packed = 0
        for start in range(0, len(rows), 64):
            tensors = {}
            for key, row in rows[start:start + 64]:
                lid, chunk, tensor = key.split("/")
                tensors.update(profile.encode_row(f"{lid}.{start}", chunk, tensor, row))
            data = safetensors.torch.save(tensors)
            raw, packed = raw + len(data), packed + len(compression.compress(data))
        ratios[label] = raw / packed
    return ratios


def zstd_report(args) -> None:
    from toymodel.sampling import ToyPipeline

    store = ReferenceStore(tempfile.mkdtemp(prefix="refdrop-zstd-"))
    host = AttnHost(make_unet(args.arch, "tiny", seed=0))
    base = {"steps": args.steps, "sampler": "euler", "cfg": 7.0, "height": args.size, "width": args.size, "seed": 1}
    run_save(host, store, "random", args.arch, "exact", base)
    pipe = ToyPipeline.load(steps=args.steps)
    pipe.save_reference(store, "toy", "circle", 10_000, "exact")
    print(f"# zstd level {compression.LEVEL} ratio (bytes before / after) on slot files of each stored form, rows "
          f"cast to fp16; {args.arch}/tiny random weights at latent {args.size}², and the trained toy model")
    print("| stored form | random weights | trained toy model |")
    print("|---|---|---|")
    random_ratios, toy_ratios = zstd_ratios(saved_rows(store, "random")), zstd_ratios(saved_rows(store, "toy"))
    for label in FORMS:
        print(f"| {label} | {random_ratios[label]:.3f} | {toy_ratios[label]:.3f} |")
    print("# low rank at energy 0.99: mean rank / the budget's largest rank, and the relative error ||UW - X|| / ||X||")
    for label, name in (("random weights", "random"), ("trained toy model", "toy")):
        rows = saved_rows(store, name)
        cells = []
        for budget in (0.25, 0.5):
            profile = Profile("l", rank_budget=budget)
            fills, errors = [], []
            for _, row in rows:
                u, w = lowrank.factor(row, profile.rank_energy, profile.max_rank(*row.shape))
                fills.append(u.shape[1] / profile.max_rank(*row.shape))
                errors.append(((u @ w - row.float()).norm() / row.float().norm()).item())
            cells.append(f"budget {budget}: fill {statistics.mean(fills):.2f}, error {statistics.mean(errors):.3f}")
        print(f"# {label}: " + "; ".join(cells))


# -- what the low-rank factorisation costs a Save -----------------------------------------------------------------

def svd_cost_report(args) -> None:
    """Seconds of ``encode_row`` per sampling step (K and V of both CFG chunks of every layer) at the full
    architectures' shapes, on random rows (which reach the rank bound: the worst case), on this CPU."""
    print(f"# encode_row seconds per step (every attn1 layer, K and V, 2 chunks), CPU, {torch.get_num_threads()} "
          "thread(s), random rows [N, C]")
    print("| profile | " + " | ".join(SHAPES) + " |")
    print("|---|" + "---|" * len(SHAPES))
    for name in args.svd_profiles.split(","):
        profile = get_profile(name)
        cells = []
        for arch, latent in SHAPES.values():
            counts: dict[tuple[int, int], int] = {}
            for level, width in layer_shapes(arch):
                key = ((latent // 2**level) ** 2, width)
                counts[key] = counts.get(key, 0) + 1
            total = 0.0
            for (tokens, width), count in counts.items():
                row = torch.randn(tokens, width).half()
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    profile.encode_row("input1.0", "cond0", "k", row)
                    times.append(time.perf_counter() - start)
                total += statistics.median(times) * count * 2 * len(CFG_CHUNKS)
            cells.append(f"{total:.2f} s")
        print(f"| `{name}` | " + " | ".join(cells) + " |")


def spread_report(args, names) -> None:
    """tests/test_profiles.py's two measures (PSNR at c = 0.5 at the Save's seed s, effect kept at c = 0.3 at seed
    s + 3) for Save seeds 1..n at the test's settings: its floors come from the lowest of these."""
    host = AttnHost(make_unet(args.arch, "tiny", seed=0))
    store = ReferenceStore(tempfile.mkdtemp(prefix="refdrop-spread-"))
    base = {"steps": args.steps, "sampler": "euler", "cfg": 7.0, "height": args.size, "width": args.size}
    psnrs: dict[str, list[float]] = {n: [] for n in names}
    kept: dict[str, list[float]] = {n: [] for n in names}
    for s in range(1, args.spread + 1):
        same, other = {**base, "seed": s}, {**base, "seed": s + 3}
        exact_image = run_save(host, store, f"exact-{s}", args.arch, "exact", same)[0]
        exact = run_use(host, store, f"exact-{s}", args.arch, 0.3, other)[0]
        plain = run_plain(host, other)[0]
        for name in names:
            ref = f"{name}-{s}"
            run_save(host, store, ref, args.arch, name, same)
            psnrs[name].append(psnr(run_use(host, store, ref, args.arch, 0.5, same)[0], exact_image))
            out = run_use(host, store, ref, args.arch, 0.3, other)[0]
            kept[name].append(1 - ((out - exact).norm() / (exact - plain).norm()).item())
    print(f"# {args.arch}/tiny random weights, latent {args.size}², {args.steps} steps, Save seeds 1-{args.spread}")
    print("| profile | lowest PSNR c=0.5 | effect kept c=0.3: min | mean | sd | max |")
    print("|---|---|---|---|---|---|")
    for name in names:
        k = kept[name]
        print(f"| `{name}` | {min(psnrs[name]):.1f} dB | {min(k):.3f} | {statistics.mean(k):.3f} | "
              f"{statistics.pstdev(k):.3f} | {max(k):.3f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sd15")
    parser.add_argument("--size", type=int, default=16, help="latent side")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3, help="other seeds for the effect kept")
    parser.add_argument("--rfg", type=float, default=0.3)
    parser.add_argument("--only", default="", help="comma-separated profile names (default: all)")
    parser.add_argument("--zstd", action="store_true", help="zstd's ratio on each stored form")
    parser.add_argument("--svd-cost", action="store_true", help="the low-rank factorisation's cost per step")
    parser.add_argument("--svd-profiles", default="lowrank-quarter,int8-lowrank-half")
    parser.add_argument("--spread", type=int, default=0, help="the test's measures over this many seed pairs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.zstd:
        return zstd_report(args)
    if args.svd_cost:
        return svd_cost_report(args)
    names = ["exact", *[n for n in (args.only.split(",") if args.only else ALL_PROFILES) if n != "exact"]]
    if args.spread:
        return spread_report(args, names[1:])
    host = AttnHost(make_unet(args.arch, "tiny", seed=0))
    store = ReferenceStore(tempfile.mkdtemp(prefix="refdrop-profiles-"))
    base = {"steps": args.steps, "sampler": "euler", "cfg": 7.0, "height": args.size, "width": args.size}
    results = measure(host, store, args.arch, base, args.rfg, range(2, 2 + args.seeds), names)
    print_table(results, f"# {args.arch}/tiny random weights, latent {args.size}², {args.steps} steps, euler, CFG 7, "
                         f"c={args.rfg}, {args.seeds} other seeds; bytes from the full architectures at 20 steps, fp16")
    fills = {n: r["fill"] for n, r in results.items() if get_profile(n).low_rank}
    if fills:
        print("# low rank: stored bytes / the bound, on this run's files: "
              + ", ".join(f"{n} {f:.2f}" for n, f in fills.items()))


if __name__ == "__main__":
    with offering(CANDIDATES.values()):  # the candidates are saved here to be measured
        main()
