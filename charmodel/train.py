"""Train the character model on freshly drawn synthetic batches, deterministically, on one CPU thread.

    python -m charmodel.train            # writes charmodel/weights.safetensors

eps-prediction on SD's discrete schedule (scaled_linear betas 0.00085..0.012, 1000 steps), so the k-diffusion
samplers that drive SD drive this model too. The prompt (the pose) is dropped 15% of the time, for CFG.
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
WARMUP = 50


def lr_factor(step: int, steps: int) -> float:
    """Linear warmup, then cosine decay to 10% at the last step (short runs gain from a decayed rate)."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    done = (step - WARMUP) / max(1, steps - WARMUP)
    return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(done * torch.pi)).item())


def train(steps: int, batch: int, lr: float, seed: int, threads: int, out: Path, log_every: int = 25) -> dict:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    unet, prompts = build(seed)
    unet.train()
    ema_unet, ema_prompts = copy.deepcopy(unet).eval(), copy.deepcopy(prompts)
    params = list(unet.parameters()) + list(prompts.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps))
    gen = torch.Generator().manual_seed(seed)
    started, cpu_started, recent, curve = time.monotonic(), time.process_time(), [], []
    for step in range(steps):
        x0, pose = random_batch(batch, gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        drop = torch.rand(batch, generator=gen) < PROMPT_DROPOUT
        prompt = prompts(torch.where(drop, prompts.empty_index, pose))
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
            curve.append((step + 1, sum(recent) / len(recent)))
            print(f"step {step + 1}/{steps} loss {curve[-1][1]:.4f} {time.monotonic() - started:.0f}s", flush=True)
    save_file(state_dict(ema_unet, ema_prompts), str(out))
    result = dict(steps=steps, batch=batch, lr=lr, seed=seed, threads=threads, wall_s=time.monotonic() - started,
                  cpu_s=time.process_time() - cpu_started, final_loss=sum(recent) / len(recent))
    print("done", result, flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=650)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    args = ap.parse_args()
    train(args.steps, args.batch, args.lr, args.seed, args.threads, args.out)


if __name__ == "__main__":
    main()
