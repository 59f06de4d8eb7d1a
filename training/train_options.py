"""``python -m training.train``'s command line, and the config a run trains with (the stored one on --resume)."""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Sequence

from .stage_config import read_config

DESCRIPTION = "Train one cascade stage on a preprocessed cache (python -m training.datasets.preprocess)."


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=DESCRIPTION)
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
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start a new run from these weights (an earlier run's last.pt or best.pt, same network "
                        "and outputs): fine-tuning with another config; optimizer and schedule start afresh")
    p.add_argument("--init-member", type=int, metavar="K",
                   help="with --init on an exported ensemble (a released stage2.pt): start from its network K (0 = "
                        "the first)")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop after N epochs in this invocation (time-sliced/preemptible jobs; then --resume)")
    p.add_argument("--max-minutes", type=float, metavar="M",
                   help="end training within M minutes: the epoch after which another would not fit is "
                        "validated and is the last (a lent machine's time limit)")
    p.add_argument("--fit-epochs", action="store_true",
                   help="with --max-minutes: before each epoch from the third on, the number of epochs becomes "
                        "what fits in the time left, so the learning-rate schedule ends with the time (a lent machine "
                        "whose speed is not known beforehand; decision 115); the saved config keeps it for --resume")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (slower on CUDA); the CPU is deterministic anyway")
    p.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="as the recipe's cpu_bf16: on CPU, the training forward pass under bfloat16 autocast "
                        "(faster where the CPU has bfloat16 instructions, e.g. AVX512-BF16; slower where it has "
                        "none); validation, hence best.pt's choice, stays float32 like inference")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dump-rank-weights", metavar="DIR", help=argparse.SUPPRESS)  # tests: DDP rank equality
    args = p.parse_args(argv)
    if args.fit_epochs and (args.max_minutes is None or args.epochs is not None):
        p.error("--fit-epochs sets the number of epochs from --max-minutes: give --max-minutes, and no --epochs")
    if args.init_member is not None and not args.init:
        p.error("--init-member picks a network of --init's ensemble: give --init too")
    return args


def resolve_config(args, state: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The config dict of this run: the stored one when resuming (``--config`` must then agree on the model)."""
    given = None
    if args.config:
        given = read_config(args.config)
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
