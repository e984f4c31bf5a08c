"""Train a dev model on freshly drawn synthetic batches, deterministically, on CPU threads.

    python -m devmodel.train toy         # writes devmodel/toy/weights.safetensors
    python -m devmodel.train char        # writes devmodel/char/weights.safetensors

eps-prediction on SD's discrete schedule (scaled_linear betas 0.00085..0.012, 1000 steps), so the k-diffusion
samplers that drive SD drive these models too; min-SNR-5 loss weighting, AdamW, a 50-step warmup (then, for ``char``,
cosine decay to 10 %), gradient clipping at 1, EMA weights. The prompt is dropped 15% of the time, for CFG. Each
model's defaults (``DevModel.training``) reproduce its committed weights bit for bit (its TRAINING.md).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from .char import MODEL as CHAR
from .model import DevModel, build, state_dict
from .toy import MODEL as TOY

MODELS = {model.name: model for model in (TOY, CHAR)}
BETAS = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
ALPHAS_CUMPROD = torch.cumprod(1.0 - BETAS, dim=0).float()
PROMPT_DROPOUT = 0.15
MIN_SNR_GAMMA = 5.0  # min-SNR loss weighting: faster convergence at equal steps (Hang et al. 2023)
WARMUP = 50


def lr_factor(step: int, steps: int, cosine_decay: bool) -> float:
    """Linear warmup, then constant or cosine decay to 10% at the last step (short runs gain from a decayed rate)."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    if not cosine_decay:
        return 1.0
    done = (step - WARMUP) / max(1, steps - WARMUP)
    return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(done * torch.pi)).item())


def train(model: DevModel, steps: int, batch: int, lr: float, seed: int, threads: int, out: Path,
          log_every: int = 25, snapshot_every: int = 0) -> dict:
    """Nothing but the learning rate's decay depends on the total number of steps, so without decay the snapshot at
    step k equals a run with ``steps=k``."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    unet, prompts = build(model, seed)
    unet.train()
    ema_unet, ema_prompts = copy.deepcopy(unet).eval(), copy.deepcopy(prompts)
    params = list(unet.parameters()) + list(prompts.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, model.training.cosine_decay))
    gen = torch.Generator().manual_seed(seed)
    started, cpu_started, recent = time.monotonic(), time.process_time(), []
    for step in range(steps):
        x0, label = model.random_batch(batch, gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        drop = torch.rand(batch, generator=gen) < PROMPT_DROPOUT
        prompt = prompts(torch.where(drop, prompts.empty_index, label))
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
    result = dict(model=model.name, steps=steps, batch=batch, lr=lr, seed=seed, threads=threads,
                  wall_s=time.monotonic() - started, cpu_s=time.process_time() - cpu_started,
                  final_loss=sum(recent) / len(recent))
    print("done", result, flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("--steps", type=int, help="default: the model's")
    ap.add_argument("--batch", type=int, help="default: the model's")
    ap.add_argument("--lr", type=float, help="default: the model's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="default: the model's weights.safetensors")
    ap.add_argument("--snapshot-every", type=int, default=0, help="also save the weights every N steps")
    args = ap.parse_args()
    model = MODELS[args.model]
    defaults = model.training
    train(model, args.steps or defaults.steps, args.batch or defaults.batch, args.lr or defaults.lr, args.seed,
          args.threads, args.out or model.weights, snapshot_every=args.snapshot_every)


if __name__ == "__main__":
    main()
