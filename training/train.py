"""`fqse train`: float, vanilla-QAT and FQSE training of ConvTasNet.

Adam, LR halved on plateau, early stop, gradient clipping, loss after the combiner: negative SNR (default) or the paper's negative SI-SNR (training.loss).
Checkpoints (`last.pt` every `save_every` steps and at each epoch end, `best.pt` on validation) are
written atomically; `--resume` continues from `last.pt` at the same step with the same optimizer state.
Multi-process through torch.distributed (torchrun; gloo on CPU, nccl on CUDA); quantizer ranges under EMA
observe the whole global batch (training.quant.ActQuant), so all ranks hold the same model.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from training import checkpoint
from training.config import ConfigError, model_config
from training.data import MixDataset
from training.metrics import si_snr_torch, snr_torch
from training.model import ConvTasNet, enhance, passthrough


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _setup_distributed() -> torch.device:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def batches(ds: MixDataset, batch_size: int, epoch: int, seed: int, rank: int, world: int) -> list[list[int]]:
    """Deterministic shuffled batches for an epoch, this rank's share."""
    order = np.random.default_rng([seed, epoch]).permutation(len(ds))
    order = order[rank::world]
    return [order[i:i + batch_size].tolist() for i in range(0, len(order) - batch_size + 1, batch_size)] or [order.tolist()]


def validate(model: torch.nn.Module, ds: MixDataset, device: torch.device) -> float:
    """Mean SI-SNR (dB) on a validation set, whole utterances."""
    model.eval()
    vals = []
    with torch.no_grad():
        for i in range(len(ds)):
            mix, clean = ds[i]
            est = enhance(model, mix[None].to(device))
            vals.append(float(si_snr_torch(est, clean[None].to(device))))
    model.train()
    return float(np.mean(vals))


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [-h["train_loss"] for h in history], label="train (-loss)")
    ax.plot(ep, [h["val_si_snr"] for h in history], label="valid SI-SNR")
    ax.set_xlabel("epoch")
    ax.set_ylabel("dB")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from runtime.files import atomic_write
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


class WorkDirError(ValueError):
    """A work dir that would lose checkpoints; one-line message."""


CHECKPOINT_FILES = ("last.pt", "best.pt")


def prepare_work_dir(work: Path, resume: bool, overwrite: bool, rank: int = 0) -> str | None:
    """Refuse a work dir holding checkpoints unless resuming or told to overwrite; returns a note for the user."""
    if resume and overwrite:
        raise WorkDirError("--resume and --overwrite exclude each other")
    held = [n for n in CHECKPOINT_FILES if (work / n).exists()]
    if resume:
        return None if (work / "last.pt").exists() else f"--resume: no {work / 'last.pt'}, starting fresh"
    if held and not overwrite:
        raise WorkDirError(f"{work} already holds {', '.join(held)}; use --resume to continue that run or "
                           "--overwrite to replace it")
    if held and rank == 0:  # --overwrite: no stale best.pt beside the new run's last.pt
        for n in held + ["loss_curve.png"]:
            (work / n).unlink(missing_ok=True)
        return f"--overwrite: removed {', '.join(held)} from {work}"
    return None


def train(conf: dict, work_dir: str | Path | None = None, resume: bool = False, max_steps: int | None = None,
          show_progress: bool = True, overwrite: bool = False) -> Path:
    """Train per config; returns the path of the best checkpoint. `max_steps` stops early (for tests).

    A work dir that holds checkpoints is refused unless `resume` (continue from last.pt) or `overwrite`."""
    device = _setup_distributed()
    rank, world = _dist_info()
    work = Path(work_dir or conf["work_dir"])
    note = prepare_work_dir(work, resume, overwrite, rank)
    if note and rank == 0:
        print(f"note: {note}", file=sys.stderr)
    if world > 1:
        dist.barrier()  # every rank decided on the same files before rank 0 writes any
    work.mkdir(parents=True, exist_ok=True)
    cfg = model_config(conf)
    tr, ds_conf = conf["training"], conf["dataset"]
    seed = int(conf.get("seed", 0))
    torch.manual_seed(seed)
    if not ds_conf.get("train_dir") or not ds_conf.get("valid_dir"):
        raise ConfigError("dataset.train_dir and dataset.valid_dir must be set")
    aug = ds_conf["augmentation"]
    snr_range = (float(aug["param0"]), float(aug["param1"])) if aug.get("enabled") else None
    if snr_range is None and (aug["speed"] or aug["dynamic_mix"] or aug["eq"] or aug["narrowband"]):
        raise ConfigError("dataset.augmentation.speed, .dynamic_mix, .eq and .narrowband re-mix the data: they need "
                          "dataset.augmentation.enabled: true")
    train_ds = MixDataset(ds_conf["train_dir"], ds_conf["segment"], cfg.sample_rate, snr_range, seed,
                          speed=float(aug["speed"]), dynamic_mix=bool(aug["dynamic_mix"]), eq=float(aug["eq"]),
                          narrowband=float(aug["narrowband"]))
    val_ds = MixDataset(ds_conf["valid_dir"], None, cfg.sample_rate)
    if tr.get("max_valid"):  # a fixed, evenly spread subset of the dev split (validation time per epoch)
        idx = np.linspace(0, len(val_ds.rows) - 1, min(int(tr["max_valid"]), len(val_ds.rows))).astype(int)
        val_ds.rows = [val_ds.rows[i] for i in idx]

    model = ConvTasNet(cfg)
    if tr.get("pretrained"):
        checkpoint.init_from_float(model, tr["pretrained"])
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=float(tr["lr"]))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=int(tr["lr_patience"]))
    state = {"epoch": 0, "batch": 0, "step": 0, "best": -math.inf, "bad_epochs": 0, "history": []}
    last, best = work / "last.pt", work / "best.pt"
    if resume and last.exists():
        ck = checkpoint.read(last)
        missing = [k for k in ("model_config", "state_dict", "optimizer", "scheduler", "train_state", "torch_rng")
                   if k not in ck]
        if missing:
            raise checkpoint.CheckpointError(f"{last}: cannot resume, missing {', '.join(missing)}")
        checkpoint.check_config(ck["model_config"], cfg, last)
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        state = ck["train_state"]
        torch.set_rng_state(ck["torch_rng"])
    # find_unused_parameters: the last block's residual conv and ranges still under EMA get no gradient
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model
    save_every = int(tr.get("save_every", 50))
    # Negative SNR by default: unlike the paper's SI-SNR it fixes the output level, which an int8
    # output grid needs (an SI-SNR-trained model may come out louder than full scale and clip).
    metric = {"snr": snr_torch, "si_snr": si_snr_torch}.get(tr.get("loss", "snr"))
    if metric is None:
        raise ConfigError(f"training.loss {tr.get('loss')!r}: choose snr or si_snr")
    ae_weight = float(tr.get("ae_weight", 0.0))  # + this x the loss of clean speech through encoder -> decoder
    if ae_weight and world > 1:
        raise ConfigError("training.ae_weight: one process only (the pass-through runs outside DDP)")

    def save_last() -> None:
        if rank == 0:
            checkpoint.save(last, model, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                            train_state=state, torch_rng=torch.get_rng_state(), config=conf)

    while state["epoch"] < int(tr["epochs"]):
        train_ds.epoch = state["epoch"]
        plan = batches(train_ds, int(tr["batch_size"]), state["epoch"], seed, rank, world)
        if tr.get("max_steps_per_epoch"):
            plan = plan[: int(tr["max_steps_per_epoch"])]
        losses = state.setdefault("epoch_losses", [])
        bar = tqdm(total=len(plan), initial=state["batch"], desc=f"epoch {state['epoch']}",
                   disable=not show_progress or rank != 0, leave=False)
        while state["batch"] < len(plan):
            items = [train_ds[i] for i in plan[state["batch"]]]
            mix = torch.stack([m for m, _ in items]).to(device)
            clean = torch.stack([c for _, c in items]).to(device)
            out = enhance(ddp, mix, cfg)
            loss = -metric(out, clean).mean()
            opt.zero_grad()
            loss.backward()
            if ae_weight:  # its own graph: quantizers still observing update their ranges in place per pass
                (-ae_weight * metric(passthrough(model, clean), clean).mean()).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(tr["clip_grad"]))
            opt.step()
            losses.append(loss.item())
            state["batch"] += 1
            state["step"] += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.2f}")
            if state["step"] % save_every == 0:
                save_last()
            if max_steps is not None and state["step"] >= max_steps:
                bar.close()
                save_last()
                return best if best.exists() else last
        bar.close()
        val = validate(model, val_ds, device) if rank == 0 else 0.0
        if world > 1:  # every rank takes the same LR / early-stop decisions
            shared = [val]
            dist.broadcast_object_list(shared, src=0)
            val = shared[0]
        entry = {"epoch": state["epoch"], "step": state["step"], "train_loss": float(np.mean(losses)),
                 "val_si_snr": val, "lr": opt.param_groups[0]["lr"]}
        state["history"].append(entry)
        if rank == 0 and show_progress:
            tqdm.write(json.dumps(entry))
        sched.step(val)
        improved = val > state["best"]
        if improved:
            state["best"], state["bad_epochs"] = val, 0
        else:
            state["bad_epochs"] += 1
        state["epoch"] += 1
        state["batch"] = 0
        state["epoch_losses"] = []
        if rank == 0:
            if improved:
                checkpoint.save(best, model, val_si_snr=val, epoch=entry["epoch"], config=conf)
            save_last()
            plot_history(state["history"], work / "loss_curve.png")
        if state["bad_epochs"] >= int(tr["early_stop"]):
            break
    if rank == 0 and last.exists():
        checkpoint.model_only(last, work / "final.pt")  # the last epoch's model (fixed-schedule configs ship it)
    return best

