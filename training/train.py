"""Train one cascade stage on a preprocessed cache (``python -m training.datasets.preprocess``).

    python -m training.train --config training/configs/stage2_default.json --data CACHE_DIR --out RUN_DIR
        [--fold 0|all] [--epochs N] [--iterations N] [--device auto|cpu|cuda] [--resume] [--seed S]
        [--max-minutes M [--fit-epochs]]
    torchrun --nproc_per_node G -m training.train ...            (DDP; see training/distributed.py)

RUN_DIR gets ``last.pt`` (full training state, every epoch, for ``--resume``), ``best.pt`` (best validation
mean foreground Dice, inference checkpoint format), ``log.csv`` and ``config.json`` (the resolved config).
The recipe is the config's "training" section (training/recipe.py). On CUDA the forward pass runs under
autocast (float16) with a GradScaler; the CPU trains in float32, or with ``--cpu-bf16`` (or the recipe's
``cpu_bf16``) under bfloat16 autocast (decision 60). A recipe with ``weight_average`` (a per-step decay) keeps
an exponential moving average of the weights, which validation judges and best.pt holds (decision 88).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from KidneyTumorSegLib.atomic import write_text
from KidneyTumorSegLib.labels import has_masses, is_auxiliary, main_labels
from KidneyTumorSegLib.preprocessing import PreprocessingConfig

from . import distributed as ddp
from .batch_augmentation import augment_batch
from .datasets import make_splits
from .epoch_clock import EpochClock, fit_epochs
from .losses import SegmentationLoss
from .optim import cpu_bf16, make_optimizer, make_scheduler, train_step
from .recipe import TrainingRecipe
from .runlog import LOSS_KEYS, CsvLog, Progress, message
from .sampling import (PatchSampler, entries_of_cases, epoch_loader, load_cache, recipe_sampler,
                       without_random_intensity_cases)
from .stage_config import StageConfig, check_preprocessing, stage_config_from_dict
from .state import (export_best, git_commit, load_initial_weights, load_state, optimizer_to, restore_rng,
                    save_state, seed_everything)
from .train_options import parse_args, resolve_config
from .validation import selection_name, selection_score, validate


# -- the run ----------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    info, device = ddp.setup(args.device)
    try:
        run(args, info, device)
    finally:
        ddp.cleanup()
    return 0


@dataclass
class Run:
    """What stays fixed during a run: where, what (stage, recipe, config), on which data and split."""

    args: argparse.Namespace
    info: ddp.DistInfo
    device: torch.device
    out: Path
    data: Path
    stage: StageConfig
    recipe: TrainingRecipe
    config: Dict[str, Any]    # the resolved config: config.json, and stored in last.pt
    run_info: Dict[str, Any]  # seed, fold, folds, config name: kept from last.pt on --resume
    index: Dict[str, Any] = field(default_factory=dict)  # the cache's index.json
    cache_pp: Optional[PreprocessingConfig] = None       # the cache's preprocessing, which best.pt records
    split: Dict[str, List[str]] = field(default_factory=dict)
    train_entries: List[Dict[str, Any]] = field(default_factory=list)
    val_entries: List[Dict[str, Any]] = field(default_factory=list)
    provenance: Dict[str, Any] = field(default_factory=dict)

    def say(self, text: str) -> None:
        message(text, self.info.is_main)

    @property
    def seed(self) -> int:
        return int(self.run_info["seed"])

    @property
    def fold(self) -> str:
        return str(self.run_info["fold"])

    @property
    def labels(self) -> List[str]:
        return list(self.stage.labels)


@dataclass
class Trainer:
    """What training changes: the model, its optimisation state, the counters and the best score so far."""

    model: torch.nn.Module
    ddp_model: torch.nn.Module  # the model as DDP wraps it (the model itself without DDP)
    loss_fn: SegmentationLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    train_dtype: Optional[torch.dtype]  # the training forward pass's autocast: float16 (CUDA), bfloat16 (--cpu-bf16)
    epoch: int  # completed epochs
    iteration: int
    best: Optional[float]
    best_epoch: Optional[int]
    loss_ema: np.ndarray  # per training entry, for the hard-case sampling weights
    average: Optional[torch.optim.swa_utils.AveragedModel] = None  # the weights' moving average (weight_average)

    @property
    def judged(self) -> torch.nn.Module:
        """The network that is validated and becomes best.pt: the weights' moving average when the recipe keeps
        one (it moves less from one validation to the next than the last step's weights), else the model."""
        return self.model if self.average is None else self.average.module

    @property
    def amp(self) -> bool:
        """CUDA float16 autocast, in training and validation (with the GradScaler)."""
        return self.train_dtype == torch.float16


def run(args: argparse.Namespace, info: ddp.DistInfo, device: torch.device) -> None:
    threads = ddp.configure_threads(info)
    ddp.configure_determinism(args.deterministic)
    r, state = start_run(args, info, device)
    load_split(r)
    t = build_trainer(r, state)
    sampler = recipe_sampler(r.data, r.index, r.train_entries, r.labels, r.stage.patch_size, r.recipe, seed=r.seed,
                             rank=info.rank)
    if sampler.merge is not None:  # ambiguous crops train with tumor and kidney merged (decision 86)
        r.say(f"{int(sampler.merge_flags.sum())} of {len(r.train_entries)} training crops have a tumor standing out "
              f"by less than {r.recipe.ambiguous_tumor_separation} SD: trained with tumor and kidney merged")
    log = CsvLog(r.out / "log.csv", main_labels(r.labels), resume_epoch=t.epoch if state else None) \
        if info.is_main else None
    r.provenance = run_provenance(r)
    precision = " +AMP" if t.amp else " +bf16" if t.train_dtype else ""
    r.say(f"stage {r.stage.stage} {r.stage.network_name}: {len(r.train_entries)} training / {len(r.val_entries)} "
          f"validation samples, fold {r.fold}, device {device}{precision}, world {info.world_size}, "
          f"{threads} CPU threads, epochs {t.epoch + 1}..{r.recipe.epochs} x {r.recipe.iterations_per_epoch} it")
    clock = EpochClock(args.max_minutes)
    first = t.epoch
    while t.epoch < r.recipe.epochs:  # the number of epochs may move (--fit-epochs)
        epoch = t.epoch
        if args.stop_after is not None and epoch - first >= args.stop_after:
            r.say(f"stopping after {epoch - first} epoch(s) as asked (--stop-after); continue with --resume")
            break
        if args.fit_epochs and epoch >= first + 2:  # from the epochs so far after the first (the warm-up)
            fit_epochs(r, t.scheduler, clock, epoch, first_fit=epoch == first + 2)
        t0 = time.perf_counter()
        row = train_epoch(r, t, sampler, epoch)
        trained_s = time.perf_counter() - t0
        final = clock.no_time_for_another(info, device)
        validated = validate_and_keep_best(r, t, row, epoch, final)
        t.epoch = epoch + 1  # on every rank
        if info.is_main:
            save_epoch(r, t, row, log, epoch, time.perf_counter() - t0)
        ddp.barrier(info)
        clock.epoch_done(time.perf_counter() - t0, trained_s, validated)  # every rank waited for rank 0's saving
        if final:
            r.say(f"stopping after epoch {epoch + 1}: another would not end within --max-minutes "
                  f"{args.max_minutes:g}; continue with --resume")
            break
    if ddp.weights_checksum(t.model, info, device) is False:
        raise RuntimeError("DDP ranks ended with different weights")
    if args.dump_rank_weights:
        Path(args.dump_rank_weights).mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in t.model.state_dict().items()},
                   Path(args.dump_rank_weights) / f"rank{info.rank}.pt")
    if t.best is not None:
        r.say(f"best validation {selection_name(r.labels)} {t.best:.4f} (epoch {t.best_epoch}) -> "
              f"{r.out / 'best.pt'}")
    ddp.barrier(info)  # every rank done before any tears the process group down (a rank that left early
    # aborted the other's teardown once, under load: "terminate called without an active exception")


def start_run(args: argparse.Namespace, info: ddp.DistInfo, device: torch.device
              ) -> Tuple[Run, Optional[Dict[str, Any]]]:
    """The run (its config: the stored one on --resume, with the command line's recipe overrides; written
    to config.json) and, on --resume, the saved training state."""
    out = Path(args.out)
    if args.init and args.resume:
        raise SystemExit("--init starts a new run; --resume continues one: use one of them.")
    if not args.resume and (out / "last.pt").exists():
        raise SystemExit(f"{out} already holds a run (last.pt): add --resume to continue it, or pick another --out")
    state = None
    if args.resume:  # rank 0 reads; the others get it over the network (no shared disk needed)
        state = ddp.on_main(lambda: load_state(out / "last.pt"), info)
    config = resolve_config(args, state)
    member = "" if args.init_member is None else f" [network {args.init_member}]"  # of an ensemble file
    run_info = dict(state["run"]) if state else {"seed": args.seed, "fold": args.fold, "folds": args.folds,
                                                 "init": f"{args.init}{member}" if args.init else None}
    run_info["config"] = str(args.config or run_info.get("config", ""))
    base = TrainingRecipe.from_dict(config.get("training", {}))
    recipe = base.with_overrides(epochs=args.epochs, iterations_per_epoch=args.iterations,
                                 batch_size=args.batch_size, val_every=args.val_every, num_workers=args.workers)
    run_info["cpu_bf16"] = cpu_bf16(args.cpu_bf16 or recipe.cpu_bf16, device,
                                    run_info.get("cpu_bf16", False) if state else None)
    recipe = recipe.with_overrides(cpu_bf16=run_info["cpu_bf16"] or recipe.cpu_bf16)  # config.json says it too
    config = {**config, "training": recipe.to_dict()}
    stage = stage_config_from_dict(config, "of this run")  # every rank validates the config itself
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.json", json.dumps(config, indent=1))
    r = Run(args, info, device, out, Path(args.data).resolve(), stage, recipe, config, run_info)
    if state is not None and args.seed != r.seed and args.seed != 0:
        r.say(f"--resume: keeping the run's seed {r.seed} (ignoring --seed {args.seed})")
    return r, state


def load_split(r: Run) -> None:
    """The cache (checked against the stage) and this fold's cases: rank 0 decides (and writes splits.json
    once), every rank uses its answer."""
    index, case_ids = load_cache(r.data)
    if int(index["stage"]) != r.stage.stage:
        raise SystemExit(f"{r.data} is a stage-{index['stage']} cache but the config is for stage {r.stage.stage}")
    r.cache_pp = PreprocessingConfig.from_dict(index["config"])
    cached = index.get("labels")  # written only by caches with auxiliary classes or a stage-1 masses class
    plain = not any(is_auxiliary(n) for n in r.labels) and not has_masses(r.labels)
    if (cached or not plain) and cached != r.labels:
        raise SystemExit(f"{r.data} was cached for the classes {index.get('labels')}, but the config predicts "
                         f"{r.labels}; preprocess again with this config.")
    check_preprocessing(r.stage.preprocessing, r.cache_pp, r.say)
    jitter, wide = r.recipe.box_jitter_mm, index.get("crop_margin_mm")
    if jitter and (wide is None or wide < r.cache_pp.box_margin_mm + max(0.0, jitter[1])):
        raise SystemExit(f"{r.data} was cut {wide or r.cache_pp.box_margin_mm} mm around each kidney, too close for "
                         f"box_jitter_mm {list(jitter)}; preprocess again with this config (decision 95).")
    folds = int(r.run_info["folds"])
    if r.fold == "all":
        split = {"train": case_ids, "val": []}
    elif not r.fold.isdigit() or int(r.fold) >= folds:
        raise SystemExit(f"--fold must be 0..{folds - 1} or 'all', got {r.fold!r}")
    else:
        splits_path = Path(r.args.splits) if r.args.splits else r.data / "splits.json"
        split = ddp.on_main(lambda: make_splits(case_ids, folds, path=splits_path)[int(r.fold)], r.info)
    if r.recipe.skip_random_intensity_cases:
        split = without_random_intensity_cases(index, split, r.say)
    r.index, r.split = index, split
    r.train_entries, r.val_entries = entries_of_cases(index, split["train"]), entries_of_cases(index, split["val"])


def build_trainer(r: Run, state: Optional[Dict[str, Any]]) -> Trainer:
    """Model, loss and optimisation, restored exactly from ``state`` (random generators included) or seeded."""
    model = r.stage.build(r.seed).to(r.device)
    loss_fn = SegmentationLoss(r.recipe.loss_config(len(r.labels)))
    optimizer = make_optimizer(r.recipe, model.parameters())
    scheduler = make_scheduler(lambda: r.recipe, optimizer)  # r.recipe may change its epochs (--fit-epochs)
    amp = r.recipe.amp and not r.args.no_amp and r.device.type == "cuda"
    bf16 = r.run_info["cpu_bf16"]
    t = Trainer(model, model, loss_fn, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=amp),
                torch.float16 if amp else torch.bfloat16 if bf16 else None, epoch=0, iteration=0, best=None,
                best_epoch=None, loss_ema=np.full(len(r.train_entries), np.nan))
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        optimizer_to(optimizer, r.device)
        scheduler.load_state_dict(state["scheduler"])
        t.scaler.load_state_dict(state["scaler"])
        t.epoch, t.iteration = int(state["epoch"]), int(state["iteration"])
        if not r.args.reset_best:
            t.best, t.best_epoch = state["best_metric"], state["best_epoch"]
        t.loss_ema = np.asarray(state["loss_ema"], float)
        restore_rng(state["rng"])
        r.say(f"resuming {r.out} after epoch {t.epoch} (iteration {t.iteration})")
    else:
        seed_everything(r.seed)
        if r.args.init:
            load_initial_weights(Path(r.args.init), model, r.labels, r.args.init_member)
            r.say(f"starting from the weights of {r.run_info['init']}")
    if r.recipe.weight_average:
        t.average = _weight_average(model, r.recipe.weight_average, state)
    net_cfg = r.stage.network
    unused = ((getattr(net_cfg, "deep_supervision", False) and not loss_fn.config.deep_supervision)
              or (getattr(net_cfg, "boundary_head", False) and loss_fn.config.boundary_head_weight == 0))
    t.ddp_model = ddp.wrap_model(model, r.info, r.device, find_unused_parameters=bool(unused))
    return t


def _weight_average(model: torch.nn.Module, decay: float, state: Optional[Dict[str, Any]]):
    """PyTorch's exponential moving average of the weights (buffers included), restored from ``state`` (a resumed
    run keeps its stored recipe, so its last.pt holds the average). The first update copies the weights."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    if state is not None:
        average.load_state_dict(state["weight_average"])
    return average


def run_provenance(r: Run) -> Dict[str, Any]:
    """How best.pt was trained (its provenance, with epochs_trained added at export)."""
    return {"data_root": str(r.data), "source_root": _source_root(r.index),
            "fold": int(r.fold) if r.fold.isdigit() else r.fold,
            "n_folds": int(r.run_info["folds"]), "seed": r.seed, "git_commit": git_commit(),
            "config": r.run_info["config"], "init": r.run_info.get("init"), "recipe": r.recipe.to_dict(),
            "world_size": r.info.world_size, "device": r.device.type, "train_cases": len(r.split["train"]),
            "val_cases": len(r.split["val"]), "epochs": r.recipe.epochs,
            "iterations_per_epoch": r.recipe.iterations_per_epoch, "batch_size": r.recipe.batch_size,
            "cpu_bf16": r.run_info["cpu_bf16"]}


def train_epoch(r: Run, t: Trainer, sampler: PatchSampler, epoch: int) -> Dict[str, Any]:
    """One epoch of optimisation steps; updates the per-entry loss EMA (over all ranks) and returns the
    epoch's log row: epoch, iteration, the last step's LR and the mean losses."""
    recipe, n = r.recipe, len(r.train_entries)
    plans = sampler.plan_epoch(epoch, recipe.iterations_per_epoch, recipe.batch_size,
                               sampler.weights(t.loss_ema, recipe.hard_loss_factor))
    loader = epoch_loader(sampler, plans, recipe.batch_size, recipe.num_workers, r.device.type == "cuda")
    t.ddp_model.train()
    sums = torch.zeros(len(LOSS_KEYS) + 1, dtype=torch.float64)
    entry_sum, entry_n = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    lr_used = t.optimizer.param_groups[0]["lr"]
    merged = recipe.merged_classes(r.labels)  # (tumor, kidney) for the marginal loss (decision 86), or None
    bar = Progress(recipe.iterations_per_epoch, f"epoch {epoch + 1}/{recipe.epochs}",
                   enabled=r.info.is_main and not r.args.quiet)
    for i, batch in enumerate(loader):
        lr_used = t.optimizer.param_groups[0]["lr"]
        if sampler.augment_on_device:  # the workers cut crops with a margin: augment them here (decision 111)
            batch["image"], batch["labels"] = augment_batch(
                batch["image"].to(r.device, non_blocking=True), batch["labels"].to(r.device, non_blocking=True),
                batch["spacing_zyx"], batch["seed"], sampler.augmentation, sampler.patch)
        comps = train_step(t.ddp_model, batch, t.loss_fn, t.optimizer, t.scaler, r.device, t.train_dtype,
                           recipe.grad_clip_norm, merged)
        t.scheduler.step()
        t.iteration += 1
        if t.average is not None:
            t.average.update_parameters(t.model)
        if math.isfinite(comps["total"]):
            sums += torch.tensor([comps[k] for k in LOSS_KEYS] + [1.0], dtype=torch.float64)
            for e in batch["entry"].tolist():
                entry_sum[e] += comps["total"]
                entry_n[e] += 1
        bar.update(i + 1, comps["total"])
    bar.close()
    # Epoch means and per-entry losses over all ranks (identical hard-case weights everywhere).
    packed = ddp.all_reduce_sum(torch.cat([sums, entry_sum, entry_n]).to(r.device), r.info).cpu()
    sums, entry_sum, entry_n = packed[:len(sums)], packed[len(sums):-len(entry_n)], packed[-len(entry_n):]
    seen = entry_n.numpy() > 0
    fresh = entry_sum.numpy()[seen] / entry_n.numpy()[seen]
    m = recipe.hard_loss_momentum
    t.loss_ema[seen] = np.where(np.isfinite(t.loss_ema[seen]), m * t.loss_ema[seen] + (1 - m) * fresh, fresh)
    row: Dict[str, Any] = {"epoch": epoch + 1, "iteration": t.iteration, "lr": lr_used}  # last step's LR
    row.update({f"loss_{k}": float(sums[j] / max(float(sums[-1]), 1.0)) for j, k in enumerate(LOSS_KEYS)})
    return row


def validate_and_keep_best(r: Run, t: Trainer, row: Dict[str, Any], epoch: int, final: bool = False) -> bool:
    """Validate when due (the scores go into ``row``; returns whether it did) and write best.pt on a new best;
    without a validation fold the final model is the result. ``final``: this epoch ends the run early (time
    limit)."""
    last = epoch + 1 == r.recipe.epochs or final
    if r.val_entries and ((epoch + 1) % r.recipe.val_every == 0 or last):
        scores = validate(t.judged, r.data, r.val_entries, r.labels, r.stage.patch_size, r.device, r.info,
                          r.recipe.val_overlap, r.recipe.val_batch_size, t.amp)
        row.update(scores)
        score = selection_score(scores)
        if t.best is None or score > t.best:
            t.best, t.best_epoch = score, epoch + 1
            if r.info.is_main:
                _export_best(r, t, {"epochs_trained": epoch + 1}, {**scores, "epoch": epoch + 1})
        return True
    if not r.val_entries and last and r.info.is_main:
        _export_best(r, t, {"epochs_trained": epoch + 1, "validation": "none"}, {"epoch": epoch + 1})
    return False


def _export_best(r: Run, t: Trainer, provenance: Dict[str, Any], metrics: Dict[str, Any]) -> None:
    export_best(r.out / "best.pt", network_name=r.stage.network_name, network_config=r.stage.network,
                model=t.judged, labels=r.labels, preprocessing=r.cache_pp, patch_size=r.stage.patch_size,
                provenance={**r.provenance, **provenance}, metrics=metrics)


def save_epoch(r: Run, t: Trainer, row: Dict[str, Any], log: CsvLog, epoch: int, seconds: float) -> None:
    """Rank 0 after each epoch: last.pt (for --resume), the log row and the console line."""
    save_state(r.out / "last.pt", model=t.model, optimizer=t.optimizer, scheduler=t.scheduler, scaler=t.scaler,
               epoch=t.epoch, iteration=t.iteration, best_metric=t.best, best_epoch=t.best_epoch,
               loss_ema=t.loss_ema, config=r.config, run=r.run_info,
               weight_average=None if t.average is None else t.average.state_dict())
    row["seconds"] = round(seconds, 3)
    log.write(row)
    val_text = f", val Dice {row['val_dice_mean']:.4f}" if "val_dice_mean" in row else ""
    r.say(f"epoch {epoch + 1}: loss {row['loss_total']:.4f}{val_text}, {row['seconds']:.1f} s")


def _source_root(index: Dict[str, Any]) -> str:
    paths = [rec.get("source_image", "") for rec in index["cases"].values() if rec.get("source_image")]
    try:
        return os.path.commonpath(paths) if paths else ""
    except ValueError:  # mixed relative/absolute paths
        return ""


if __name__ == "__main__":
    sys.exit(main())
