"""Storage profiles on Flux and Chroma: bytes, same-seed reproduction error and the share of the RFG effect kept.

    python -m benchmarks.dit_profiles [--model flux] [--size 128] [--steps 20] [--seeds 3] [--rfg 0.3] [--only a,b]

The measures of ``benchmarks/profiles.py`` (for U-Nets) on the tiny random Flux or Chroma of the tests
(``tests/support/tinyflux.py``, ``tinychroma.py``; reForge's block convention, through its ``dit`` hook on the fake
patcher): for each profile P,
- latent PSNR of a Use of P against the exact Save image at the Save's own seed and settings, c = ``--rfg`` and c = 1
  (exact, and the input-keeping ``input``, give inf);
- effect kept at other seeds: 1 - |out_P - out_exact| / |out_exact - out_plain|;
- bytes of a reference on the tiny model (its manifest), and by arithmetic for real Flux-dev at 1024² (57 blocks of
  4096 image tokens × 3072, 24 heads of 128, bf16; one chunk: distilled guidance at CFG 1) at 20 and 28 steps: the
  rows' bound (``Profile.row_bytes_bound``) divided by the zstd ratio this run's rows reach, plus, for a profile that
  keeps each block's input, the tokens' positions in every slot file (float32, their own zstd ratio at 1024²).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from lib_refdrop.reference import compression
from lib_refdrop.reference.address import POSITIONS
from lib_refdrop.reference.profiles import PROFILES, Profile, get_profile
from lib_refdrop.reference.store import ReferenceStore
from tests.support import fakehost
from tests.support import tinychroma as tc
from tests.support import tinyflux as tf
from tests.support.ditpass import save, use

from .candidates import CANDIDATES, offering
from .common import gb
from .profiles import psnr, saved_rows, zstd_ratios

# Flux-dev (and Chroma): 19 double + 38 single blocks, hidden 3072 = 24 heads of 128, RoPE axes (16, 56, 56)
FLUX_BLOCKS, FLUX_WIDTH, FLUX_HEAD, FLUX_AXES = 57, 3072, 128, (16, 56, 56)
FLUX_TOKENS = (1024 // 16) ** 2  # 1024² px: a 128² latent in 2×2 patches
# the offered profiles and the candidates that tell the parts of ``lean`` apart on a DiT
DEFAULT_NAMES = ("exact", "lean", "balanced", "compact", "input", "input-int8-zstd", "int8-stride2-zstd")
MODELS = {"flux": tf.make_patcher, "chroma": tc.make_patcher}


def flux_positions_ratio() -> float:
    """zstd's ratio on the positions a 1024² Flux reference keeps in every slot file (float32 rotations)."""
    import safetensors.torch

    side = 1024 // 16
    ids = torch.zeros(side, side, 3)
    ids[..., 1] += torch.arange(side, dtype=torch.float32)[:, None]
    ids[..., 2] += torch.arange(side, dtype=torch.float32)[None, :]
    pe = tf.EmbedND(10000, FLUX_AXES)(ids.reshape(1, -1, 3))[0, 0]
    data = safetensors.torch.save({POSITIONS: pe.contiguous()})
    return len(data) / len(compression.compress(data))


def flux_bytes(profile: Profile, steps: int, rows_ratio: float, positions_ratio: float) -> float:
    """Bytes of a Flux-dev 1024² reference with ``profile`` at ``steps`` steps and CFG 1."""
    slots = sum(profile.keeps_sigma(i) for i in range(steps))
    rows = FLUX_BLOCKS * len(profile.tensors) * profile.row_bytes_bound(FLUX_TOKENS, FLUX_WIDTH)
    positions = 4 * FLUX_TOKENS * FLUX_HEAD * 2 if profile.kept.projected else 0  # [tokens, 64, 2, 2] float32
    if profile.file_encoding == "zstd":
        rows, positions = rows / rows_ratio, positions / positions_ratio
    return slots * (rows + positions)


def measure(model: str, names, size: int, steps: int, rfg: float, seeds, cfg: float = 1.0) -> dict[str, dict]:
    store = ReferenceStore(tempfile.mkdtemp(prefix="refdrop-dit-profiles-"))
    with fakehost.activated("reforge"):
        from lib_refdrop.webui import hosts

        host = hosts.detect()
        unet = MODELS[model]("reforge")
        base = {"steps": steps, "size": size, "cfg": cfg}
        saved = {name: save(host, unet, store, name=name, profile=name, seed=1, **base) for name in names}
        exact_other = {s: use(host, unet, store, rfg, name="exact", seed=s, **base)[0] for s in seeds}
        plain_other = {s: tf.sample(unet, seed=s, **base) for s in seeds}
        save(host, unet, store, name="rows-input", profile="input", seed=1, **base)
        # every K/V row and every block input, fp16, for zstd's ratio on each stored form (the positions apart)
        rows = {"kv": saved_rows(store, "exact"), "input": _without_positions(saved_rows(store, "rows-input"))}
        results = {}
        for name in names:
            profile = get_profile(name)
            same = psnr(use(host, unet, store, rfg, name=name, seed=1, **base)[0], saved["exact"])
            same_c1 = psnr(use(host, unet, store, 1.0, name=name, seed=1, **base)[0], saved["exact"])
            kept = []
            for s in seeds:
                out = use(host, unet, store, rfg, name=name, seed=s, **base)[0]
                kept.append(1 - ((out - exact_other[s]).norm() / (exact_other[s] - plain_other[s]).norm()).item())
            ratio = 1.0
            if profile.file_encoding == "zstd":
                form = Profile("rows", storage=profile.storage, rank_budget=profile.rank_budget)  # a row's encoding
                ratio = zstd_ratios(rows["input" if profile.kept.projected else "kv"], {name: form})[name]
            results[name] = {"psnr": same, "psnr_c1": same_c1, "kept": kept, "zstd": ratio,
                             "bytes": store.manifest(name)["bytes"]}
    return results


def _without_positions(rows: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    return [(key, row) for key, row in rows if key != POSITIONS]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="flux", choices=sorted(MODELS))
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (16 px a token)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3, help="other seeds for the effect kept")
    parser.add_argument("--rfg", type=float, default=0.3)
    parser.add_argument("--cfg", type=float, default=1.0, help="1: one cond chunk (distilled guidance); else real CFG")
    parser.add_argument("--only", default="", help="comma-separated profile names (default: " +
                        ",".join(DEFAULT_NAMES) + ")")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = ["exact", *[n for n in (args.only.split(",") if args.only else DEFAULT_NAMES) if n != "exact"]]
    results = measure(args.model, names, args.size, args.steps, args.rfg, range(2, 2 + args.seeds), args.cfg)
    positions_ratio = flux_positions_ratio()
    raw = flux_bytes(PROFILES["exact"], 20, 1.0, 1.0)
    print(f"# tiny random {args.model} ({tf.DOUBLE_BLOCKS} double + {tf.SINGLE_BLOCKS} single blocks, hidden "
          f"{tf.HIDDEN}), {args.size}² px ({(args.size // 16) ** 2} image tokens), {args.steps} steps, Euler, "
          f"CFG {args.cfg:g}, c={args.rfg}, {args.seeds} other seeds; Flux-dev (Chroma) 1024² bytes by arithmetic, "
          f"bf16, one chunk (real CFG doubles them; zstd on positions: {positions_ratio:.2f})")
    print(f"| profile | tiny model | Flux-dev 1024², 20 steps | 28 steps | vs raw | PSNR c={args.rfg:g} / c=1 | "
          "effect kept (min-max) | zstd ratio of the rows |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        profile = get_profile(name)
        twenty, twenty_eight = (flux_bytes(profile, steps, r["zstd"], positions_ratio) for steps in (20, 28))
        kept = r["kept"]
        zstd = f"{r['zstd']:.3f}" if profile.file_encoding == "zstd" else "-"
        print(f"| `{name}` | {r['bytes'] / 1e3:.1f} KB | {gb(twenty)} | {gb(twenty_eight)} | {raw / twenty:.1f}× | "
              f"{r['psnr']:.1f} / {r['psnr_c1']:.1f} dB | {100 * statistics.mean(kept):.1f} % "
              f"({100 * min(kept):.1f}-{100 * max(kept):.1f}) | {zstd} |")


if __name__ == "__main__":
    with offering(CANDIDATES.values()):  # the candidates are saved here to be measured
        main()
