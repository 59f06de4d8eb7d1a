"""Train one cascade stage on a preprocessed cache (``python -m training.datasets.preprocess``).

    python -m training.train --config training/configs/stage2_default.json --data CACHE_DIR --out RUN_DIR
        [--fold 0|all] [--epochs N] [--iterations N] [--device auto|cpu|cuda] [--resume] [--seed S]
    torchrun --nproc_per_node G -m training.train ...            (DDP; see training/distributed.py)

RUN_DIR gets ``last.pt`` (full training state, every epoch, for ``--resume``), ``best.pt`` (best validation
mean foreground Dice, inference checkpoint format), ``log.csv`` and ``config.json`` (the resolved config).
The recipe is the config's "training" section (training/recipe.py). On CUDA the forward pass runs under
autocast (float16) with a GradScaler; the CPU trains in float32.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from KidneyTumorSegLib.inference import THREADS_ENV
from KidneyTumorSegLib.labels import is_auxiliary, main_labels
from KidneyTumorSegLib.preprocessing import PreprocessingConfig

from . import distributed as ddp
from .datasets import make_splits
from .losses import SegmentationLoss
from .recipe import TrainingRecipe
from .runlog import LOSS_KEYS, CsvLog, Progress, message
from .sampling import PatchSampler, entries_of_cases, epoch_loader, hard_case_flags, load_cache
from .stage_config import load_stage_config
from .state import (export_best, git_commit, load_state, optimizer_to, restore_rng, save_state,
                    seed_everything)
from .validation import validate


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="stage config JSON (or a name in training/configs); optional with --resume")
    p.add_argument("--data", required=True, help="preprocessed cache folder (index.json + .npz)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--fold", default="0", help="validation fold (0-based) or 'all' (train on all, no validation)")
    p.add_argument("--folds", type=int, default=5, help="number of cross-validation folds")
    p.add_argument("--splits", help="splits file (default DATA/splits.json; made once, then reused)")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--iterations", type=int, help="override training.iterations_per_epoch")
    p.add_argument("--batch-size", type=int, help="override training.batch_size (per process)")
    p.add_argument("--val-every", type=int, help="override training.val_every")
    p.add_argument("--workers", type=int, help="override training.num_workers")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun: each rank its GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue exactly from RUN_DIR/last.pt")
    p.add_argument("--reset-best", action="store_true",
                   help="with --resume on another cache (fine-tuning on new data): forget the best validation "
                        "score, whose cases are not comparable, so best.pt follows the new validation")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop after N epochs in this invocation (time-sliced/preemptible jobs; then --resume)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (slower on CUDA); the CPU is deterministic anyway")
    p.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dump-rank-weights", metavar="DIR", help=argparse.SUPPRESS)  # tests: DDP rank equality
    return p.parse_args(argv)


# -- building blocks --------------------------------------------------------------------------------------
def configure_threads(info: ddp.DistInfo) -> int:
    """One thread count for the whole run (also for the validation's sliding window, via its env var):
    several ranks on one machine share its cores, and a constant count keeps CPU results reproducible."""
    if os.environ.get(THREADS_ENV):
        n = int(os.environ[THREADS_ENV])
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = max(1, cores // info.local_world_size)
        os.environ[THREADS_ENV] = str(n)
    torch.set_num_threads(n)
    return n


def make_optimizer(recipe: TrainingRecipe, params) -> torch.optim.Optimizer:
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
                           weight_decay=recipe.weight_decay)


def lr_factor(recipe: TrainingRecipe, iteration: int) -> float:
    """LR multiplier after ``iteration`` steps: linear warm-up, then the schedule down to min_lr."""
    if iteration < recipe.warmup_iterations:
        return (iteration + 1) / recipe.warmup_iterations
    span = max(recipe.total_iterations - recipe.warmup_iterations, 1)
    t = min(max(iteration - recipe.warmup_iterations, 0) / span, 1.0)
    floor = recipe.min_lr / recipe.lr
    if recipe.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    if recipe.schedule == "poly":
        return floor + (1 - floor) * (1 - t) ** 0.9
    return 1.0


def make_scheduler(recipe: TrainingRecipe, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    # A plain function (not saved in the state): the horizon follows the CURRENT recipe, so --epochs
    # may extend a resumed run; the step count (last_epoch) is what the state restores.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(recipe, it))


def train_step(model, batch: Dict[str, torch.Tensor], loss_fn, optimizer, scaler, device: torch.device,
               amp: bool, clip: Optional[float]) -> Dict[str, float]:
    """One optimisation step; returns the loss components as floats (non-finite loss: step skipped)."""
    image = batch["image"].to(device, non_blocking=True)
    target = batch["labels"].to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
        output = model(image)
    loss, comps = loss_fn(output, target)  # float32 (the losses cast the logits)
    # Always backward, even for a non-finite loss: under DDP every rank must join the gradient all-reduce.
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones (no-op without AMP)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip else float("inf"))
    if scaler.is_enabled():
        scaler.step(optimizer)  # skips the step itself on inf/NaN gradients
    elif torch.isfinite(norm):  # the norm of the all-reduced gradients: the same decision on every rank
        optimizer.step()
    scaler.update()
    return {k: float(v) for k, v in comps.items()}


def resolve_config(args, state: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The config dict of this run: the stored one when resuming (``--config`` must then agree on the model)."""
    given = None
    if args.config:
        path = Path(args.config)
        if not path.suffix and not path.exists():
            path = Path(__file__).resolve().parent / "configs" / f"{path.name}.json"
        given = json.loads(path.read_text(encoding="utf-8"))
    if state is None:
        if given is None:
            raise SystemExit("--config is required (except with --resume)")
        return given
    stored = state["config"]
    if given is not None:
        for key in ("stage", "network", "labels", "patch_size", "preprocessing"):
            if given.get(key) != stored.get(key):
                raise SystemExit(f"--resume: --config differs from the run's config in '{key}'; "
                                 "resume with the same config (or omit --config).")
    return stored


def stage_from_dict(d: Dict[str, Any]):
    """A StageConfig from a dict, through the normal loader (and its checks) via a temporary file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(d))
        return load_stage_config(path)


def check_preprocessing(stage_pp: PreprocessingConfig, cache_pp: PreprocessingConfig, say) -> None:
    keys = ["target_spacing", "normalization", "orientation", "image_interpolation",
            "box_margin_mm", "box_min_kidney_mm3", "box_merge"]
    keys += ["clip_range"] if cache_pp.normalization == "clip_zscore" else ["window_level", "window_width"]
    diff = [k for k in keys if getattr(stage_pp, k) != getattr(cache_pp, k)]
    if diff:
        say("WARNING: the cache was preprocessed differently from the stage config ("
            + ", ".join(f"{k}: cache {getattr(cache_pp, k)} vs config {getattr(stage_pp, k)}" for k in diff)
            + "); the model is trained on, and best.pt records, the CACHE's preprocessing.")


# -- the run ----------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    info, device = ddp.setup(args.device)
    try:
        run(args, info, device)
    finally:
        ddp.cleanup()
    return 0


def run(args: argparse.Namespace, info: ddp.DistInfo, device: torch.device) -> None:
    main_rank = info.is_main
    say = lambda text: message(text, main_rank)  # noqa: E731
    out, data = Path(args.out), Path(args.data).resolve()
    threads = configure_threads(info)
    torch.backends.cudnn.benchmark = not args.deterministic
    if args.deterministic:
        torch.backends.cudnn.deterministic = True
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)

    if not args.resume and (out / "last.pt").exists():
        raise SystemExit(f"{out} already holds a run (last.pt): add --resume to continue it, or pick another --out")
    state = None
    if args.resume:  # rank 0 reads; the others get it over the network (no shared disk needed)
        state = ddp.on_main(lambda: load_state(out / "last.pt"), info)
    config = resolve_config(args, state)
    run_info = dict(state["run"]) if state else {"seed": args.seed, "fold": args.fold, "folds": args.folds}
    base = TrainingRecipe.from_dict(config.get("training", {}))
    recipe = base.with_overrides(epochs=args.epochs, iterations_per_epoch=args.iterations,
                                 batch_size=args.batch_size, val_every=args.val_every, num_workers=args.workers)
    config = {**config, "training": recipe.to_dict()}
    stage = stage_from_dict(config)  # every rank validates the config itself
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config, indent=1))
    seed, fold = int(run_info["seed"]), str(run_info["fold"])
    if state is not None and args.seed != seed and args.seed != 0:
        say(f"--resume: keeping the run's seed {seed} (ignoring --seed {args.seed})")
    labels = list(stage.labels)

    # Data and split: rank 0 decides (and writes splits.json once), everyone uses its answer.
    index, case_ids = load_cache(data)
    if int(index["stage"]) != stage.stage:
        raise SystemExit(f"{data} is a stage-{index['stage']} cache but the config is for stage {stage.stage}")
    cache_pp = PreprocessingConfig.from_dict(index["config"])
    cached = index.get("labels")  # written only by caches with auxiliary classes
    if (cached or any(is_auxiliary(n) for n in labels)) and cached != labels:
        raise SystemExit(f"{data} was cached for the classes {index.get('labels')}, but the config predicts "
                         f"{labels}; preprocess again with this config.")
    check_preprocessing(stage.preprocessing, cache_pp, say)
    if fold == "all":
        split = {"train": case_ids, "val": []}
    elif not fold.isdigit() or int(fold) >= int(run_info["folds"]):
        raise SystemExit(f"--fold must be 0..{int(run_info['folds']) - 1} or 'all', got {fold!r}")
    else:
        splits_path = Path(args.splits) if args.splits else data / "splits.json"
        split = ddp.on_main(lambda: make_splits(case_ids, int(run_info["folds"]), path=splits_path)[int(fold)],
                            info)
    train_entries = entries_of_cases(index, split["train"])
    val_entries = entries_of_cases(index, split["val"])

    # Model, loss, optimisation.
    model = stage.build(seed).to(device)
    loss_fn = SegmentationLoss(recipe.loss_config(len(labels)))
    optimizer = make_optimizer(recipe, model.parameters())
    scheduler = make_scheduler(recipe, optimizer)
    amp = recipe.amp and not args.no_amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    start_epoch, iteration, best, best_epoch = 0, 0, None, None
    loss_ema = np.full(len(train_entries), np.nan)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        optimizer_to(optimizer, device)
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, iteration = int(state["epoch"]), int(state["iteration"])
        best, best_epoch = (None, None) if args.reset_best else (state["best_metric"], state["best_epoch"])
        loss_ema = np.asarray(state["loss_ema"], float)
        restore_rng(state["rng"])
        say(f"resuming {out} after epoch {start_epoch} (iteration {iteration})")
    else:
        seed_everything(seed)
    net_cfg = stage.network
    unused = ((getattr(net_cfg, "deep_supervision", False) and not loss_fn.config.deep_supervision)
              or (getattr(net_cfg, "boundary_head", False) and loss_fn.config.boundary_head_weight == 0))
    ddp_model = ddp.wrap_model(model, info, device, find_unused_parameters=bool(unused))

    sampler = PatchSampler(
        data, train_entries, stage.patch_size, recipe.foreground_index(labels), recipe.foreground_fraction,
        hard_case_flags(index, train_entries, labels, recipe.hard_case_label), recipe.hard_case_factor,
        recipe.augmentation_config(), seed=seed, rank=info.rank, interface_fraction=recipe.interface_fraction)
    log = CsvLog(out / "log.csv", main_labels(labels), resume_epoch=start_epoch if state else None) \
        if main_rank else None
    provenance = {"data_root": str(data), "source_root": _source_root(index),
                  "fold": int(fold) if fold.isdigit() else fold,
                  "n_folds": int(run_info["folds"]), "seed": seed, "git_commit": git_commit(),
                  "config": str(args.config or run_info.get("config", "")), "recipe": recipe.to_dict(),
                  "world_size": info.world_size, "device": device.type, "train_cases": len(split["train"]),
                  "val_cases": len(split["val"]), "epochs": recipe.epochs,
                  "iterations_per_epoch": recipe.iterations_per_epoch, "batch_size": recipe.batch_size}
    run_info = {**run_info, "config": str(args.config or run_info.get("config", ""))}
    say(f"stage {stage.stage} {stage.network_name}: {len(train_entries)} training / {len(val_entries)} "
        f"validation samples, fold {fold}, device {device}{' +AMP' if amp else ''}, world {info.world_size}, "
        f"{threads} CPU threads, epochs {start_epoch + 1}..{recipe.epochs} x {recipe.iterations_per_epoch} it")

    done_here = 0
    for epoch in range(start_epoch, recipe.epochs):
        if args.stop_after is not None and done_here >= args.stop_after:
            say(f"stopping after {done_here} epoch(s) as asked (--stop-after); continue with --resume")
            break
        t0 = time.perf_counter()
        plans = sampler.plan_epoch(epoch, recipe.iterations_per_epoch, recipe.batch_size,
                                   sampler.weights(loss_ema, recipe.hard_loss_factor))
        loader = epoch_loader(sampler, plans, recipe.batch_size, recipe.num_workers, device.type == "cuda")
        ddp_model.train()
        sums = torch.zeros(len(LOSS_KEYS) + 1, dtype=torch.float64)
        entry_sum, entry_n = torch.zeros(len(train_entries), dtype=torch.float64), torch.zeros(len(train_entries),
                                                                                               dtype=torch.float64)
        lr_used = optimizer.param_groups[0]["lr"]
        bar = Progress(recipe.iterations_per_epoch, f"epoch {epoch + 1}/{recipe.epochs}",
                       enabled=main_rank and not args.quiet)
        for i, batch in enumerate(loader):
            lr_used = optimizer.param_groups[0]["lr"]
            comps = train_step(ddp_model, batch, loss_fn, optimizer, scaler, device, amp, recipe.grad_clip_norm)
            scheduler.step()
            iteration += 1
            if math.isfinite(comps["total"]):
                sums += torch.tensor([comps[k] for k in LOSS_KEYS] + [1.0], dtype=torch.float64)
                for e in batch["entry"].tolist():
                    entry_sum[e] += comps["total"]
                    entry_n[e] += 1
            bar.update(i + 1, comps["total"])
        bar.close()
        # Epoch means and per-entry losses over all ranks (identical hard-case weights everywhere).
        packed = ddp.all_reduce_sum(torch.cat([sums, entry_sum, entry_n]).to(device), info).cpu()
        sums, entry_sum, entry_n = packed[:len(sums)], packed[len(sums):-len(entry_n)], packed[-len(entry_n):]
        seen = entry_n.numpy() > 0
        fresh = entry_sum.numpy()[seen] / entry_n.numpy()[seen]
        m = recipe.hard_loss_momentum
        loss_ema[seen] = np.where(np.isfinite(loss_ema[seen]), m * loss_ema[seen] + (1 - m) * fresh, fresh)
        row: Dict[str, Any] = {"epoch": epoch + 1, "iteration": iteration, "lr": lr_used}  # last step's LR
        row.update({f"loss_{k}": float(sums[j] / max(float(sums[-1]), 1.0)) for j, k in enumerate(LOSS_KEYS)})

        last = epoch + 1 == recipe.epochs
        if val_entries and ((epoch + 1) % recipe.val_every == 0 or last):
            scores = validate(model, data, val_entries, labels, stage.patch_size, device, info,
                              recipe.val_overlap, recipe.val_batch_size, amp)
            row.update(scores)
            if best is None or scores["val_dice_mean"] > best:
                best, best_epoch = scores["val_dice_mean"], epoch + 1
                if main_rank:
                    export_best(out / "best.pt", network_name=stage.network_name, network_config=stage.network,
                                model=model, labels=labels, preprocessing=cache_pp, patch_size=stage.patch_size,
                                provenance={**provenance, "epochs_trained": epoch + 1},
                                metrics={**scores, "epoch": epoch + 1})
        elif not val_entries and last and main_rank:  # no validation fold: the final model is the result
            export_best(out / "best.pt", network_name=stage.network_name, network_config=stage.network,
                        model=model, labels=labels, preprocessing=cache_pp, patch_size=stage.patch_size,
                        provenance={**provenance, "epochs_trained": epoch + 1, "validation": "none"},
                        metrics={"epoch": epoch + 1})
        if main_rank:
            save_state(out / "last.pt", model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                       epoch=epoch + 1, iteration=iteration, best_metric=best, best_epoch=best_epoch,
                       loss_ema=loss_ema, config=config, run=run_info)
            row["seconds"] = round(time.perf_counter() - t0, 3)
            log.write(row)
            val_text = f", val Dice {row['val_dice_mean']:.4f}" if "val_dice_mean" in row else ""
            say(f"epoch {epoch + 1}: loss {row['loss_total']:.4f}{val_text}, {row['seconds']:.1f} s")
        ddp.barrier(info)
        done_here += 1

    if ddp.weights_checksum(model, info, device) is False:
        raise RuntimeError("DDP ranks ended with different weights")
    if args.dump_rank_weights:
        Path(args.dump_rank_weights).mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                   Path(args.dump_rank_weights) / f"rank{info.rank}.pt")
    if best is not None:
        say(f"best validation mean Dice {best:.4f} (epoch {best_epoch}) -> {out / 'best.pt'}")


def _source_root(index: Dict[str, Any]) -> str:
    paths = [rec.get("source_image", "") for rec in index["cases"].values() if rec.get("source_image")]
    try:
        return os.path.commonpath(paths) if paths else ""
    except ValueError:  # mixed relative/absolute paths
        return ""


if __name__ == "__main__":
    sys.exit(main())
