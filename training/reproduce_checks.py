"""What ``training.reproduce`` checks before any step runs (training takes hours), and the small rules it
shares with its steps: where a config named on the command line lives, which stage-2 configs and seeds it trains."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from KidneyTumorSegLib.checkpoint import CheckpointError, load_checkpoint
from KidneyTumorSegLib.labels import is_auxiliary

from .datasets.layouts import discover
from .own_data import own_data_flags
from .stage_config import config_path, load_stage_config
from .step_runner import StepError


def config_file(spec: str) -> Path:
    """A stage config's file, absolute (stamps and commands name it): ``stage_config.config_path``'s rule."""
    return config_path(spec).resolve()


def has_cases(root: Path) -> bool:
    try:
        return bool(discover(root))
    except (ValueError, OSError):
        return False


def stage2_configs(args) -> List[str]:
    """The stage-2 configs in training order: the main one (not with --quick: the smoke config), then each
    fine-tune."""
    return [*([] if args.quick else [args.stage2_config]), *(args.stage2_finetune_config or ())]


def stage2_seeds(args) -> List[int]:
    """The main stage 2's seeds: --stage2-seeds, else the trainer's default 0."""
    return list(getattr(args, "stage2_seeds", None) or [0])


def stage1_source(args) -> Optional[Path]:
    """--stage1-from: the trained stage-1 file to use instead of training stage 1 (absolute), else None."""
    given = getattr(args, "stage1_from", None)
    return Path(given).resolve() if given else None


def check_stage1_file(path: Path) -> None:
    """A --stage1-from file must load as a checkpoint (the same loader inference uses) and predict the kidney."""
    if not path.is_file():
        raise StepError(f"--stage1-from {path}: no such file; give a trained stage-1 checkpoint, e.g. "
                        "Resources/Models/<model>/stage1.pt or WORK/runs/stage1/best.pt.")
    try:
        labels = load_checkpoint(path).labels
    except CheckpointError as exc:
        raise StepError(f"--stage1-from {path}: {exc}") from None
    names = [l.lower() for l in labels]
    if "kidney" not in names or {"tumor", "cyst"} & set(names):
        raise StepError(f"--stage1-from {path} predicts {labels}: a stage-1 model predicts 'kidney' and no tumor or "
                        "cyst (is it a stage-2 file?).")


def stage2_init_members(args) -> List[Optional[int]]:
    """--stage2-init: per main stage-2 seed, the network of the file it starts from (None: the file is one
    network, which every seed starts from; k: an ensemble's k-th network, one per seed). [] without it."""
    given = getattr(args, "stage2_init", None)
    if not given:
        return []
    seeds = stage2_seeds(args)
    if not Path(given).is_file():
        raise StepError(f"--stage2-init {given}: no such file; give a stage-2 checkpoint or a released stage2.pt.")
    try:
        ckpt = load_checkpoint(Path(given))
    except CheckpointError as exc:
        raise StepError(f"--stage2-init {given}: {exc}") from None
    want = load_stage_config(config_file(args.stage2_config))  # checked now, not after hours of data and caches
    if (ckpt.network_name, ckpt.config, list(ckpt.labels)) != (want.network_name, want.network, list(want.labels)):
        raise StepError(f"--stage2-init {given} holds a {ckpt.network_name} predicting {list(ckpt.labels)}, not the "
                        f"network and outputs of --stage2-config {args.stage2_config}; give a file of that config.")
    n = len(getattr(ckpt.model, "members", ()))
    if n and n != len(seeds):
        raise StepError(f"--stage2-init {given} is an ensemble of {n} networks: give as many --stage2-seeds (one "
                        f"network each), not {len(seeds)}.")
    return list(range(n)) if n else [None] * len(seeds)


def check_configs(args) -> None:
    """Before any step runs (training takes hours): each fine-tune, and a main stage 2 with data of its own,
    has what it builds on, and a config with auxiliary classes gets cases with anatomy maps."""
    finetunes = args.stage2_finetune_config or ()
    seeds = stage2_seeds(args)
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise StepError(f"--stage2-seeds {' '.join(map(str, seeds))}: give distinct seeds, 0 or more.")
    if len(seeds) > 1 and finetunes:
        raise StepError("--stage2-seeds ships an ensemble of the main stage 2's seeds, and --stage2-finetune-config "
                        "would continue only one of them; drop one of the two.")
    if getattr(args, "stage2_init", None) and args.quick:
        raise StepError("--quick trains the tiny smoke networks, which --stage2-init's weights do not fit; drop one.")
    stage2_init_members(args)  # the file loads, and an ensemble has one network per seed
    if args.quick and finetunes:
        raise StepError("--quick trains the tiny smoke networks, which the --stage2-finetune-config recipes (full "
                        "stage 2) cannot continue; drop one of the two.")
    own = {spec: own_data_flags(config_file(spec), args) for spec in stage2_configs(args)}
    if not args.quick and own[args.stage2_config] and not all(own[f] for f in finetunes):
        raise StepError(f"--stage2-config {args.stage2_config} trains on cases of its own, so DATA's stage-2 cache "
                        f"is never made, and the fine-tunes without a \"data\" section "
                        f"({', '.join(f for f in finetunes if not own[f])}) would train on it; give them one too.")
    # cases made here without anatomy maps (an existing DATA is checked by preprocessing, on disk)
    bare = (args.download_kits23 or (args.synthetic and not args.anatomy)) and not has_cases(args.data)
    given = stage1_source(args)
    if given:
        check_stage1_file(given)
    for spec in [*([] if given else [args.stage1_config]), *own]:
        aux = [n for n in load_stage_config(config_file(spec)).labels if is_auxiliary(n)]
        if bare and aux:
            source = "KiTS23 downloads" if args.download_kits23 else "synthetic cases without --anatomy"
            raise StepError(f"{spec} trains auxiliary classes ({', '.join(aux)}) from each case's anatomy map, "
                            f"which {source} do not have; add --anatomy DIR... (to --synthetic N or --quick), or use "
                            "configs without 'aux_' labels (stage1_default, stage2_default).")
