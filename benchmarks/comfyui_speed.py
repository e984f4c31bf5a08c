"""Plain, the limit, Save and Use (`exact`, `lean`) inside an installed ComfyUI, in one run of interleaved rounds.

    PYTHONPATH=/path/to/ComfyUI python -m benchmarks.comfyui_speed --checkpoint sd15.safetensors [--cpu]
        [--size 128] [--steps 4] [--rounds 8]

Run it with ComfyUI's own Python (its packages), from this repository's root, with the ComfyUI folder on
``PYTHONPATH`` (its ``comfy`` and ``folder_paths`` are imported as ComfyUI's ``main.py`` finds them). Each condition
is one KSampler run through ComfyUI's ``comfy.sample.sample`` (euler, normal, CFG 7) of the checkpoint (a name in
ComfyUI's checkpoints folder, or a path) on the pack's nodes (``lib_refdrop/comfyui/nodes.py``) with a temporary
``refdrop`` folder; the limit is plain with every attn1 computing ComfyUI's attention a second time
(``limit.limit_patch``, set with ``set_model_attn1_replace``), the one extra attention a Use cannot avoid. Every
round runs every condition once; the ratio to that round's limit is taken per round and its median printed, with
each condition's median seconds and process CPU time (docs/speed.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a name in ComfyUI's checkpoints folder, or a path")
    parser.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU (its --cpu)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    import comfy.cli_args
    comfy.cli_args.args.cpu = args.cpu
    import comfy.sample
    import comfy.sd
    import folder_paths
    import torch
    from comfy.ldm.modules import attention

    from benchmarks.limit import limit_patch
    from lib_refdrop.comfyui import nodes
    from lib_refdrop.comfyui.folders import Library
    from lib_refdrop.patcher.unet_layers import attn1_layer_keys

    path = args.checkpoint if os.path.isfile(args.checkpoint) else folder_paths.get_full_path_or_raise(
        "checkpoints", args.checkpoint)
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=True)
    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    latent = torch.zeros(1, 4, args.size // 8, args.size // 8)

    def sample(patched, seed):
        noise = comfy.sample.prepare_noise(latent, seed)
        return comfy.sample.sample(patched, noise, args.steps, 7.0, "euler", "normal", positive, negative, latent,
                                   seed=seed, disable_pbar=True)

    def comfy_attention(q, k, v, extra_options):
        return attention.optimized_attention(q, k, v, extra_options["n_heads"],
                                             attn_precision=extra_options.get("attn_precision"),
                                             transformer_options=extra_options)

    def limit():
        patched = model.clone()
        for key in attn1_layer_keys(patched.model.diffusion_model):
            patched.set_model_attn1_replace(limit_patch(comfy_attention), *key)
        return patched

    folder = tempfile.mkdtemp(prefix="refdrop-bench-")
    library = Library(lambda: [folder])
    sample(model, 1)  # loads the model
    for profile in ("exact", "lean"):
        sample(nodes.save(library, model, f"ref-{profile}", True, profile, 0.0, 1.0)[0], 1)
    conditions = {
        "plain": lambda: model,
        "Save exact": lambda: nodes.save(library, model, "s-exact", True, "exact", 0.0, 1.0)[0],
        "Save lean": lambda: nodes.save(library, model, "s-lean", True, "lean", 0.0, 1.0)[0],
        "Use exact": lambda: nodes.use(library, model, "ref-exact", 0.3, 0.0, 1.0),
        "Use lean": lambda: nodes.use(library, model, "ref-lean", 0.3, 0.0, 1.0),
        "limit": limit,
    }
    wall = {name: [] for name in conditions}
    cpu = {name: [] for name in conditions}
    for round_ in range(args.rounds):
        for name, make in conditions.items():
            patched = make()  # planning a node is part of the KSampler run in ComfyUI: Use's opening is timed below
            t0, c0 = time.perf_counter(), time.process_time()
            sample(patched, 2 + round_)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    comfyui = os.path.dirname(os.path.abspath(folder_paths.__file__))
    print(f"ComfyUI {comfyui}, {os.path.basename(path)}, {args.size}², {args.steps} steps, {args.rounds} "
          f"interleaved rounds, torch threads {torch.get_num_threads()}")
    header = ("condition", "seconds, median (range)", "/ limit, per round", "CPU time / limit's")
    print(f"{header[0]:11s} {header[1]:>24s} {header[2]:>19s} {header[3]:>19s}")
    for name in conditions:
        per_round = statistics.median(t / lim for t, lim in zip(wall[name], wall["limit"], strict=True))
        cpu_ratio = statistics.median(cpu[name]) / statistics.median(cpu["limit"])
        spread = f"{statistics.median(wall[name]):.3f} ({min(wall[name]):.3f}-{max(wall[name]):.3f})"
        print(f"{name:11s} {spread:>24s} {per_round:>19.3f} {cpu_ratio:>19.3f}")


if __name__ == "__main__":
    main()
