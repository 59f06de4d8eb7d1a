"""Command line: cache a data set for one cascade stage (see ``training.datasets.cache``).

    python -m training.datasets.preprocess DATA_ROOT -o CACHE_DIR --stage 1|2 [--config STAGE_CONFIG]
        [--spacing X Y Z] [--layout auto|kits19|kits21|kits23|nnunet] [--mean M --std S]
        [--label-kind onehot|nearest]

With ``--config`` (a file or name from training/configs) the cache uses exactly that stage's preprocessing
(spacing and normalization), which the trained checkpoint then carries to inference.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from KidneyTumorSegLib.preprocessing import PreprocessingConfig

from .cache import default_config, preprocess_dataset
from .layouts import LAYOUTS, discover


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.datasets.preprocess", description=__doc__.split("\n")[0])
    p.add_argument("root", help="data set folder (KiTS19/21/23 or nnU-Net raw layout)")
    p.add_argument("-o", "--output", required=True, help="cache folder (one per stage)")
    p.add_argument("--stage", type=int, choices=(1, 2), required=True)
    p.add_argument("--config", help="stage config (file or name in training/configs) whose preprocessing to use")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="target spacing in mm (default 4 4 4 for stage 1, 1.5 1.5 1.5 for stage 2)")
    p.add_argument("--layout", default="auto", choices=("auto",) + LAYOUTS)
    p.add_argument("--mean", type=float, help="fixed z-score mean (default: foreground of all cases)")
    p.add_argument("--std", type=float, help="fixed z-score std (with --mean)")
    p.add_argument("--label-kind", default="onehot", choices=("onehot", "nearest"))
    p.add_argument("--margin-mm", type=float,
                   help="stage 2: margin around each kidney box (default: the config's box_margin_mm, 15)")
    p.add_argument("--crop-margin-mm", type=float,
                   help="stage 2: cut each crop this far around the kidney while the box rule keeps its margin "
                        "(default: the margin plus the config's training.box_jitter_mm upper bound, if any)")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    p.add_argument("--skip-incomplete", action="store_true", help="ignore cases without image or labels")
    args = p.parse_args(argv)
    if (args.mean is None) != (args.std is None):
        p.error("--mean and --std go together")
    extra = {} if args.mean is None else {"mean": args.mean, "std": args.std}
    if args.margin_mm is not None:
        extra["box_margin_mm"] = args.margin_mm
    stage_labels, crop_margin = None, args.crop_margin_mm
    if args.config:
        from ..stage_config import load_stage_config
        stage_config = load_stage_config(args.config)
        stage_labels = stage_config.labels  # auxiliary ("aux_") classes come from each case's anatomy map
        if stage_config.stage != args.stage:
            p.error(f"--config {args.config} defines stage {stage_config.stage}, not {args.stage}")
        config = PreprocessingConfig.from_dict({**stage_config.preprocessing.to_dict(), **extra,
                                                **({"target_spacing": args.spacing} if args.spacing else {})})
        jitter = stage_config.training.get("box_jitter_mm")
        if crop_margin is None and jitter and args.stage == 2:  # the boxes move in training: record the rule's box
            crop_margin = config.box_margin_mm + max(0.0, float(jitter[1]))
    else:
        config = default_config(args.stage, args.spacing, **extra)
    cases = discover(args.root, args.layout, skip_incomplete=args.skip_incomplete)
    index = preprocess_dataset(cases, args.stage, config, args.output, label_kind=args.label_kind,
                               dtype=args.dtype, log=print, stage_labels=stage_labels, crop_margin_mm=crop_margin)
    n = sum(len(c["entries"]) for c in index["cases"].values())
    stats = (f"mean {index['config']['mean']:.2f}, std {index['config']['std']:.2f}"
             if index["config"].get("mean") is not None else f"normalization {index['config']['normalization']}")
    print(f"{len(index['cases'])} cases, {n} samples in {args.output}; {stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
