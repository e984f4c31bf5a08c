"""Train the toy model on freshly drawn synthetic batches, deterministically, in a few CPU minutes.

    python -m toymodel.train            # writes toymodel/weights.safetensors

eps-prediction on SD's discrete schedule (scaled_linear betas 0.00085..0.012, 1000 steps), so the k-diffusion
samplers that drive SD drive this model too. The prompt is dropped 15% of the time, for CFG.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from .data import random_batch
from .model import WEIGHTS, build, state_dict

BETAS = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
ALPHAS_CUMPROD = torch.cumprod(1.0 - BETAS, dim=0).float()
PROMPT_DROPOUT = 0.15
MIN_SNR_GAMMA = 5.0  # min-SNR loss weighting: faster convergence at equal steps (Hang et al. 2023)


def train(steps: int, batch: int, lr: float, seed: int, threads: int, out: Path, log_every: int = 25,
          snapshot_every: int = 0) -> dict:
    """Nothing depends on the total number of steps, so the snapshot at step k equals a run with ``steps=k``."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    unet, prompts = build(seed)
    unet.train()
    ema_unet, ema_prompts = copy.deepcopy(unet).eval(), copy.deepcopy(prompts)
    params = list(unet.parameters()) + list(prompts.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    gen = torch.Generator().manual_seed(seed)
    started, recent = time.monotonic(), []
    for step in range(steps):
        x0, shape = random_batch(batch, gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        drop = torch.rand(batch, generator=gen) < PROMPT_DROPOUT
        prompt = prompts(torch.where(drop, prompts.empty_index, shape))
        ac = ALPHAS_CUMPROD[t].view(-1, 1, 1, 1)
        xt = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
        eps = unet(xt, t, encoder_hidden_states=prompt).sample
        snr = (ac / (1 - ac)).view(-1)
        weight = snr.clamp(max=MIN_SNR_GAMMA) / snr
        loss = (weight * (eps - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(0.995, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_prompts, prompts)):
                for e, p in zip(ema.parameters(), live.parameters(), strict=True):
                    e.lerp_(p, 1 - decay)
        recent = (recent + [float(loss.detach())])[-log_every:]
        if (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps} loss {sum(recent) / len(recent):.4f} "
                  f"{time.monotonic() - started:.0f}s", flush=True)
        if snapshot_every and (step + 1) % snapshot_every == 0 and step + 1 < steps:
            save_file(state_dict(ema_unet, ema_prompts), str(out.with_suffix(f".step{step + 1}.safetensors")))
    save_file(state_dict(ema_unet, ema_prompts), str(out))
    result = dict(steps=steps, batch=batch, lr=lr, seed=seed, threads=threads, wall_s=time.monotonic() - started,
                  final_loss=sum(recent) / len(recent))
    print("done", result, flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument("--snapshot-every", type=int, default=0, help="also save the weights every N steps")
    args = ap.parse_args()
    train(args.steps, args.batch, args.lr, args.seed, args.threads, args.out, snapshot_every=args.snapshot_every)


if __name__ == "__main__":
    main()
