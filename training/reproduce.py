"""Reproduce a released model end to end with ONE command (restartable: finished steps are skipped).

    python -m training.reproduce --data DATA_ROOT --work WORKDIR [--synthetic N [--anatomy DIR ...] | --download-kits23]
        [--fold 0] [--folds 5] [--device auto] [--stage1-config C1 | --stage1-from STAGE1_PT] [--stage2-config C2]
        [--name NAME] [--quick]
        [--jobs 2] [--stage2-finetune-config CONFIG ... | --stage2-seeds S ...] [--train-minutes M [--fit-epochs]]

Steps (each one's own command is printed and logged to WORKDIR/reproduce.log):
  data       optional: ``training.synthetic`` (N cases from KiTS23 label maps, painted from real anatomy maps
             with --anatomy) or ``training.download kits23``
  splits     WORK/splits.json (``training.datasets.splits``; by case id, written once)
  preprocess ``training.datasets.preprocess DATA_ROOT -o WORK/cache/stage{1,2} --stage {1,2} --config ...``
             (no WORK/cache/stage2 for a --stage2-config with data of its own, see train2ft)
  train      ``training.train --config C --data WORK/cache/stageN --out WORK/runs/stageN ...`` (with
             --stage1-from, stage 2 only: that file is the release's stage 1, neither cached nor trained)
  train2ft   optional: stage 2 again with each --stage2-finetune-config in turn (WORK/runs/stage2_ft,
             stage2_ft2, ...; steps train2ft, train2ft2, ...), each from the previous run's last.pt. A
             config with ``data.synthetic_flags`` trains on its own cases: training.synthetic with the same N,
             seed and sources plus those flags (steps data_<flags>, preprocess2_<flags>; WORK/data/<flags>
             and WORK/cache/stage2_<flags>, where <flags> is e.g. bowel_walls for --bowel-walls), checked to be
             the same cases, sources and phases as DATA_ROOT's. A --stage2-config with such a section is
             trained on its own cases the same way (from random weights); a stage-1 config may not have one.
             A stage-2 config's ``data.extra_cases`` (KiTS23 ids, a seed) add more shapes painted alike
             (WORK/data/<flags>_extra<S>, linked with the own cases into <flags>_plus<S>; step
             data_<flags>_plus<S>), split so that --fold validates as before (WORK/splits_<flags>_plus<S>_fold<F>.json;
             decision 105)
  train2_seedS optional, with --stage2-seeds: the main stage 2 again with each further seed S
             (WORK/runs/stage2_seedS; seed 0 is WORK/runs/stage2); the release's stage 2 is then one ensemble
             file averaging the seeds' best.pt (decisions 75 and 80)
  predict    the cascade (``KidneyTumorSegLib.pipeline``) with the two best.pt on the validation fold
  evaluate   ``training.evaluate WORK/predict/labels WORK/predict/ref -o WORK/eval``
  export     ``training.export`` -> WORK/release/NAME/{stage1.pt, stage2.pt, models_entry.json}

A step is skipped when WORK/steps/STEP.json exists (written when the step succeeded) with the same
settings; different settings stop the run with a message (use a new --work, or delete that file on purpose): e.g. a
fine-tune added to a finished work folder changes stage 2, so delete steps/{predict,evaluate,export}.json.
``--quick``: tiny networks and a few-iteration recipe on a few small synthetic cases (CPU, minutes): a smoke
test of the whole chain, not a useful model.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from KidneyTumorSegLib.atomic import write_text

from . import export as export_mod
from .datasets.layouts import discover
from .datasets.splits import make_splits
from .predict_cases import predict
from .own_data import (check_same_cases, evaluation_data, extra_key, extra_provenance, extra_tag, own_data_flags,
                       own_data_tag, paint_extra, plus_tag, stage2_splits)
from .reproduce_checks import (check_configs, config_file, has_cases, stage1_source, stage2_configs,
                               stage2_init_members, stage2_seeds)
from .reproduce_quick import QUICK, quick_config
from .stage_config import ExtraCases, load_stage_config, read_config
from .step_runner import REPO_ROOT, Runner, StepError, py
SHARED_LABELS = REPO_ROOT.parent / "shared" / "data" / "kits23" / "labels"  # KiTS23 label maps, if present
def train_command(config: Path, cache: Path, run_dir: Path, splits: Path, fold: int, folds: int,
                  device: str, max_minutes: Optional[float] = None, seed: int = 0, fit_epochs: bool = False
                  ) -> List[str]:
    # training/train.py; an interrupted run (last.pt present, step not marked done) continues with --resume.
    cmd = py("training.train", "--config", config, "--data", cache, "--out", run_dir, "--splits", splits,
             "--fold", fold, "--folds", folds, "--device", device)
    cmd += ["--max-minutes", f"{max_minutes:g}"] + (["--fit-epochs"] if fit_epochs else []) if max_minutes else []
    cmd += ["--seed", str(seed)] if seed else []  # train.py's default seed is 0
    return cmd + (["--resume"] if (run_dir / "last.pt").is_file() else [])


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.reproduce", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path, help="DATA_ROOT: KiTS19/21/23 or nnU-Net layout")
    p.add_argument("--work", required=True, type=Path, help="WORKDIR for caches, runs, predictions, release")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--synthetic", type=int, metavar="N", help="first write N synthetic cases into DATA_ROOT")
    src.add_argument("--download-kits23", action="store_true", help="first download KiTS23 imaging into DATA_ROOT")
    p.add_argument("--label-maps", type=Path, default=SHARED_LABELS,
                   help="KiTS23 label maps for --synthetic (default: %(default)s)")
    p.add_argument("--anatomy", type=Path, nargs="+", metavar="DIR",
                   help="--synthetic: paint the cases from these real anatomy label maps (folders or files)")
    p.add_argument("--labels-from", type=Path, help="kits23 clone to copy segmentations from (--download-kits23)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--folds", type=int, help="number of CV folds (default 5; 2 with --quick)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    stage1 = p.add_mutually_exclusive_group()
    stage1.add_argument("--stage1-config", default="stage1_default")
    stage1.add_argument("--stage1-from", type=Path, metavar="STAGE1_PT",
                        help="use this trained stage 1 (e.g. a released model's stage1.pt) instead of training one: "
                             "no stage-1 preprocessing or training; give the DATA, --folds and --fold it was trained "
                             "with, so that its validation cases stay held out")
    p.add_argument("--stage2-config", default="stage2_default")
    p.add_argument("--stage2-finetune-config", metavar="CONFIG", nargs="+",
                   help="then fine-tune stage 2 with each config in turn, each from the previous run's last "
                        "weights (train --init; e.g. stage2_v2_ft stage2_v2_ft2, decisions 49-50), and ship the last")
    p.add_argument("--stage2-seeds", type=int, nargs="+", metavar="S",
                   help="train the main stage 2 once per seed and ship one ensemble file averaging them (e.g. 0 1; "
                        "decision 80: seeds of one recipe differ by more than the narrowest margins)")
    p.add_argument("--stage2-init", type=Path, metavar="STAGE2_PT",
                   help="start the main stage 2 from these weights instead of random ones (train --init): a run's "
                        "best.pt, or a released stage2.pt whose ensemble gives its k-th network to the k-th "
                        "--stage2-seeds seed; a fine-tune of a shipped model with its config (e.g. stage2_gpu_ft)")
    p.add_argument("--name", help="release name (default: reproduced_fold<F>, quick_fold<F> with --quick)")
    p.add_argument("--seed", type=int, default=0, help="seed for synthetic data")
    p.add_argument("--quick", action="store_true", help="tiny smoke run on synthetic data (CPU, minutes)")
    p.add_argument("--train-minutes", type=float, metavar="M",
                   help="all training (the stages trained here, each seed and any fine-tunes) ends within M "
                        "minutes, shared equally by the runs one after the other (train --max-minutes; a lent "
                        "machine)")
    p.add_argument("--fit-epochs", action="store_true",
                   help="with --train-minutes: each run's number of epochs becomes what fits in its share, so its "
                        "learning-rate schedule ends with the time (train --fit-epochs; decision 115)")
    p.add_argument("--jobs", type=int, default=1, choices=(1, 2),
                   help="2: preprocess and train the two stages side by side, each with half the CPU threads"
                        " (CPU training uses few threads well); with --stage1-from only stage 2 trains, and its first "
                        "two --stage2-seeds train side by side")
    args = p.parse_args(argv)
    if args.fit_epochs and not args.train_minutes:
        p.error("--fit-epochs fits the epochs to --train-minutes: give --train-minutes too")
    if args.anatomy and not args.synthetic and not args.quick:
        p.error("--anatomy goes with --synthetic N")
    if args.quick and args.synthetic is None and not args.download_kits23 and not has_cases(args.data):
        args.synthetic = QUICK["synthetic"]
    folds = args.folds or (QUICK["folds"] if args.quick else 5)
    name = args.name or f"{'quick' if args.quick else 'reproduced'}_fold{args.fold}"
    work = args.work.resolve()
    try:
        run = Runner(work)
    except OSError as exc:
        print(f"Cannot use {work} as the work folder: {exc}", file=sys.stderr)
        return 1
    try:
        _reproduce(args, run, work, folds, name)
    except KeyboardInterrupt:
        run.say("Interrupted; rerun the same command to continue from the last finished step.")
        return 130
    except (StepError, ValueError, OSError) as exc:  # DatasetError / ExportError are ValueErrors
        run.say(f"reproduce stopped: {exc}")
        return 1
    return 0


def _reproduce(args, run: Runner, work: Path, folds: int, name: str) -> None:
    data = args.data.resolve()
    check_configs(args)
    _data_step(args, run, data)
    cases = discover(data)
    run.say(f"{len(cases)} cases in {data} (layout {cases[0].layout})")
    # -- splits -------------------------------------------------------------------------------------------
    ids = [c.case_id for c in cases]
    splits_path = work / "splits.json"
    splits = make_splits(ids, n_folds=folds, path=splits_path)
    if not 0 <= args.fold < folds:
        raise StepError(f"--fold {args.fold} is not one of the {folds} folds (0-{folds - 1}).")
    val_ids = splits[args.fold]["val"]
    run.say(f"fold {args.fold} of {folds}: {len(splits[args.fold]['train'])} training, {len(val_ids)} validation cases")

    configs, caches = _preprocess_steps(args, run, work, data, splits_path)
    best = _train_steps(args, run, work, configs, splits_path, folds, caches)

    stamp, held_out = _predict_step(args, run, work, data, best, val_ids, name)

    # -- evaluation and export -------------------------------------------------------------------------------
    run.step("evaluate", stamp, lambda: run.run(py("training.evaluate", work / "predict" / "labels",
                                                   work / "predict" / "ref", "-o", work / "eval")))
    synthetic = args.synthetic or (data / "synthetic.json").is_file()  # also right on a rerun
    painted = f" (final stage 2 and validation: {held_out.name} variant)" if held_out != data else ""
    final = (stage2_configs(args) or [None])[-1]
    painted += extra_provenance(config_file(final) if final else None, args, work, work / "splits.json")
    given = stage1_source(args)
    painted += f"; stage 1 not trained here: {given.name} (SHA-256 {export_mod.sha256_file(given)})" if given else ""
    init = getattr(args, "stage2_init", None)  # check_configs has refused it with --quick
    painted += f"; stage 2 fine-tuned from {init.name} (SHA-256 {export_mod.sha256_file(init)})" if init else ""
    provenance = (f"{'synthetic (training.synthetic from KiTS23 label maps), ' if synthetic else ''}"
                  f"{cases[0].layout} layout, {len(cases)} cases{painted}; fold {args.fold} of {folds} "
                  f"({len(splits[args.fold]['train'])} train / {len(val_ids)} validation, splits.json by case id)")
    cmd = py("training.export", "--stage1", best[0], "--stage2", *best[1:], "--name", name, "-o", work / "release",
             "--metrics", work / "eval" / "metrics.csv", "--data-provenance", provenance, "--overwrite")
    run.step("export", {**stamp, "name": name}, lambda: run.run(cmd))
    release = work / "release" / name
    run.say(f"\nDone. Release model: {release} (stage1.pt, stage2.pt, models_entry.json); validation metrics: "
            f"{work / 'eval' / 'summary.md'}.\nUse it: kidney-tumor-seg segment CT -o OUT --model {release}\n"
            f"Install it: copy {release} into Resources/Models/ and merge models_entry.json into "
            "Resources/Models/models.json (training.export --registry does both).")


def _predict_step(args, run: Runner, work: Path, data: Path, best: List[Path], val_ids: List[str],
                  name: str) -> Tuple[Dict[str, object], Path]:
    """Predict the validation cases with the trained networks into WORK/predict; returns (the step's stamp, the
    folder of the cases predicted). The cases are those the final stage 2 trained on (``evaluation_data``):
    its config's own data if it names one, else DATA; same ids, same split."""
    final = (stage2_configs(args) or [None])[-1]
    held_out = evaluation_data(config_file(final) if final else None, work, data)
    stamp: Dict[str, object] = {"best": [export_mod.sha256_file(b) for b in best], "val": val_ids}
    if held_out != data:  # only then: work folders finished before the key existed stay valid
        stamp["cases"] = str(held_out)

    def do_predict() -> None:
        by_id = {c.case_id: c for c in discover(held_out)}  # here: a finished step needs no raw cases
        out = work / "predict"
        # predictions of an interrupted run of the same step are kept; of another model or cases, never
        marker = out / "stamp.json"
        if not marker.is_file() or json.loads(marker.read_text(encoding="utf-8")) != json.loads(json.dumps(stamp)):
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            write_text(marker, json.dumps(stamp))
        export_mod.export_model(best[0], best[1:] if len(best) > 2 else best[1], name, work / "candidate",
                                overwrite=True)
        predict(work / "candidate" / name, [by_id[i] for i in val_ids], out, args.device, run.say)
    run.step("predict", stamp, do_predict)
    return stamp, held_out


def _data_step(args, run: Runner, data: Path) -> None:
    """--synthetic N / --download-kits23: write the cases into DATA_ROOT first. A DATA_ROOT that
    training.synthetic already filled with the same N and seed is taken as it is (the model card's recipe makes
    it with its own command); one made otherwise is refused, so no other cases are written beside its own."""
    if args.synthetic:
        cmd, settings = synthetic_command(args, data)
        log = data / "synthetic.json"
        if log.is_file() and not (run.work / "steps" / "data.json").is_file():
            made = json.loads(log.read_text(encoding="utf-8"))
            n, seed = len(made.get("cases", {})), made.get("seed")
            if (n, seed) != (args.synthetic, args.seed):
                raise StepError(f"{data} already holds {n} synthetic cases made with seed {seed}; --synthetic "
                                f"{args.synthetic} --seed {args.seed} would write other cases beside them. Give "
                                "the same --synthetic and --seed, or an empty --data folder.")
            run.say(f"== data: {data} already holds {n} cases made with seed {seed}; not made again")
            run.mark("data", settings, 0.0)
        run.step("data", settings, lambda: run.run(cmd))
    elif args.download_kits23:
        cmd = py("training.download", "kits23", "-o", data,
                 *(["--labels-from", args.labels_from] if args.labels_from else []))
        run.step("data", {"download": "kits23"}, lambda: run.run(cmd))


def synthetic_command(args, data: Path, flags: Sequence[str] = (), extra: Optional[ExtraCases] = None
                      ) -> Tuple[List[str], Dict[str, object]]:
    """The training.synthetic command for --synthetic N (with extra generator ``flags`` for a stage's own data:
    the same cases, seed and sources; with ``extra``, its KiTS23 ids and seed instead of N and --seed) and the
    settings that identify its output."""
    spacing = QUICK["synthetic_spacing"] if args.quick else None
    anatomy = ["--anatomy", *args.anatomy] if args.anatomy else []
    seed = extra.seed if extra else args.seed
    cases = ["--cases", *extra.kits23] if extra else ["-n", args.synthetic]
    cmd = py("training.synthetic", "--kits23", args.label_maps, "-o", data, *cases,
             "--seed", seed, *(["--spacing", *spacing] if spacing else []), *anatomy, *flags,
             "--workers", min(4, os.cpu_count() or 1))  # the same files for any number of workers
    settings: Dict[str, object] = {"synthetic": len(extra.kits23) if extra else args.synthetic, "seed": seed,
                                   "spacing": spacing, **({"cases": list(extra.kits23)} if extra else {})}
    if args.anatomy:
        settings["anatomy"] = [str(a) for a in args.anatomy]
    if flags:
        settings["flags"] = list(flags)
    return cmd, settings


def _preprocess_steps(args, run: Runner, work: Path, data: Path,
                      splits_path: Path) -> Tuple[Dict[int, Path], Dict[int, Path]]:
    """Each stage's config file (checked) and cache, the two stages side by side with --jobs 2; a stage-2
    config with data of its own (``data.synthetic_flags``) is cached from those cases (``own_data_cache``)."""
    configs, caches, prep, own = {}, {}, [], None
    for stage, base in ((1, args.stage1_config), (2, args.stage2_config))[1 if stage1_source(args) else 0:]:
        configs[stage] = quick_config(stage, base, work / "configs" / f"stage{stage}_quick.json") if args.quick \
            else config_file(base)
        cfg = load_stage_config(configs[stage])
        if cfg.stage != stage:
            raise StepError(f"--stage{stage}-config {configs[stage]} defines stage {cfg.stage}.")
        if cfg.synthetic_flags and stage == 1:
            raise StepError(f"--stage1-config {configs[stage]} names data of its own (its \"data\" section); "
                            "reproduce makes such data only for stage 2.")
        if cfg.synthetic_flags:
            own = configs[stage]
            continue
        caches[stage] = work / "cache" / f"stage{stage}"
        # The cache is made at the config's spacing, so the trained network sees what inference feeds it.
        spacing = list(cfg.preprocessing.target_spacing or ())
        cmd = py("training.datasets.preprocess", data, "-o", caches[stage], "--stage", stage,
                 "--config", configs[stage])
        prep.append((f"preprocess{stage}", {"data": str(data), "config": str(configs[stage]), "spacing": spacing},
                     lambda tag, threads, c=cmd: run.run(c, tag, threads)))
    run.steps(prep, args.jobs)
    if own is not None:
        caches[2] = own_data_cache(own, args, run, work, splits_path)
    return configs, caches


def _train_steps(args, run: Runner, work: Path, configs: Dict[int, Path], splits_path: Path,
                 folds: int, caches: Optional[Dict[int, Path]] = None) -> List[Path]:
    """Train both stages (side by side with --jobs 2; with --stage1-from, the first two --stage2-seeds seeds) on
    their caches (default WORK/cache/stage<n>), then each further seed, then each fine-tune; returns the best.pt
    of stage 1 and of each final stage-2 run."""
    caches = caches or {s: work / "cache" / f"stage{s}" for s in (1, 2)}
    seeds, members = stage2_seeds(args), stage2_init_members(args)
    init_sha = export_mod.sha256_file(args.stage2_init) if members else ""  # read once for every seed's stamp
    given = stage1_source(args)  # --stage1-from: a trained stage 1, so only stage 2 trains
    side = 2 if given and args.jobs == 2 and len(seeds) > 1 else 1  # stage-2 seeds run side by side
    # A time limit covers all training: the runs one after the other share it equally (the two stages, or the
    # first two seeds, side by side with --jobs 2 count as one), then each further seed and each fine-tune.
    finetunes = args.stage2_finetune_config or ()
    slots = (1 if args.jobs == 2 or given else 2) + len(seeds) - side + len(finetunes)
    minutes = args.train_minutes / slots if args.train_minutes else None

    def training(stage: int, seed: int = 0) -> Tuple[str, Dict[str, object], Path, List[str]]:
        suffix = f"_seed{seed}" if seed else ""  # seed 0 keeps the names (and stamps) of a single run
        run_dir = work / "runs" / f"stage{stage}{suffix}"
        settings = {"config": read_config(configs[stage]), "fold": args.fold, "folds": folds,
                    **({"seed": seed} if seed else {})}
        splits = stage2_splits(configs[2], args, work, splits_path) if stage == 2 else splits_path
        cmd = train_command(configs[stage], caches[stage], run_dir, splits, args.fold, folds, args.device,
                            minutes, seed, args.fit_epochs)
        if stage == 2 and members:  # --stage2-init: this seed's network of the file
            k = members[seeds.index(seed)]
            settings["init"] = init_sha + ("" if k is None else f"[{k}]")
            cmd += [] if "--resume" in cmd else ["--init", str(args.stage2_init.resolve()),
                                                 *([] if k is None else ["--init-member", str(k)])]
        return f"train{stage}{suffix}", settings, run_dir, cmd

    first = ([] if given else [training(1)]) + [training(2, s) for s in seeds[:side]]
    later = [training(2, seed) for seed in seeds[side:]]
    run.check_trainings(first + later)  # fine-tunes start from a run not yet finished: checked as they start
    train = [(name, settings, lambda tag, threads, c=cmd, d=run_dir, s=settings: run.train(c, d, s, tag, threads))
             for name, settings, run_dir, cmd in first]
    run.steps(train, args.jobs)
    runs = [step[2] for step in first]
    main = len(runs) - side  # the main stage 2's run (its first seed's); fine-tunes continue it
    for name, settings, run_dir, cmd in later:
        run.step(name, settings, lambda c=cmd, d=run_dir, s=settings: run.train(c, d, s))
        runs.append(run_dir)
    for i, config in enumerate(finetunes, 1):
        runs[main] = _finetune_step(config, i, args, run, work, runs[main], splits_path, folds, minutes)
    for i, run_dir in enumerate(runs):
        if not (run_dir / "best.pt").is_file():
            raise StepError(f"Training stage {min(i + 1 + bool(given), 2)} finished without {run_dir / 'best.pt'}.")
    return ([given] if given else []) + [r / "best.pt" for r in runs]


def _finetune_step(name: str, i: int, args, run: Runner, work: Path, first: Path, splits_path: Path,
                   folds: int, minutes: Optional[float]) -> Path:
    """Stage 2 again, from the previous run's last weights with the i-th fine-tuning config (a run of its
    own: runs/stage2_ft, stage2_ft2, ...; steps train2ft, train2ft2, ...), on the config's own data if it
    names one (``data.synthetic_flags``)."""
    config = config_file(name)
    suffix = "" if i == 1 else str(i)
    run_dir = work / "runs" / f"stage2_ft{suffix}"
    cache = own_data_cache(config, args, run, work, splits_path)
    settings = {"config": read_config(config), "fold": args.fold, "folds": folds,
                "init": export_mod.sha256_file(first / "last.pt")}
    cmd = train_command(config, cache, run_dir, stage2_splits(config, args, work, splits_path), args.fold, folds,
                        args.device, minutes, fit_epochs=args.fit_epochs)
    cmd += [] if "--resume" in cmd else ["--init", str(first / "last.pt")]
    run.step(f"train2ft{suffix}", settings, lambda: run.train(cmd, run_dir, settings))
    return run_dir


def own_data_cache(config: Path, args, run: Runner, work: Path, splits_path: Path) -> Path:
    """WORK/cache/stage2, or for a config with ``data.synthetic_flags`` the cache of its own synthetic cases:
    generated into WORK/data/<flags> (same N, seed and sources as --synthetic, plus the flags; steps
    data_<flags> and preprocess2_<flags>), so the same case ids keep the same split."""
    flags = own_data_flags(config, args)
    if not flags:
        return work / "cache" / "stage2"
    tag = own_data_tag(flags)
    data, cache = work / "data" / tag, work / "cache" / f"stage2_{tag}"
    cmd, settings = synthetic_command(args, data, flags)

    def make() -> None:
        run.run(cmd)
        check_same_cases(data, args.data.resolve(), splits_path)
    run.step(f"data_{tag}", settings, make)
    extra = load_stage_config(config).extra_cases
    if extra:  # more KiTS23 shapes beside those cases: painted alike, then one folder of both (decision 105)
        tag, own = plus_tag(tag, extra.seed), data
        data, cache = work / "data" / tag, work / "cache" / f"stage2_{tag}"
        more = work / "data" / extra_tag(own.name, extra.seed)
        cmd, settings = synthetic_command(args, more, flags, extra)

        run.step(f"data_{tag}", settings, lambda: paint_extra(run, cmd, own, more, data, extra.kits23))
    # Stamped by what the cache depends on, not by the file: configs that cache alike share it (a main stage 2
    # and a fine-tune with the same flags), and a changed spacing or label list makes it again.
    raw = read_config(config)
    stamp = {"data": str(data), "preprocessing": raw["preprocessing"], "labels": raw["labels"],
             **({"extra_cases": extra_key(extra)} if extra else {})}
    step = f"preprocess2_{tag}"
    jitter = raw.get("training", {}).get("box_jitter_mm")
    if jitter:  # cut wider (preprocess reads the config, decision 95): a cache and a step of its own
        stamp["box_jitter_mm"] = jitter
        wide = f"_wide{float(jitter[1]):g}"  # one cache per crop margin
        cache, step = cache.with_name(cache.name + wide), step + wide
    prep = py("training.datasets.preprocess", data, "-o", cache, "--stage", 2, "--config", config)
    run.step(step, stamp, lambda: run.run(prep))
    return cache


if __name__ == "__main__":
    sys.exit(main())
