"""A stage config's own synthetic cases (its ``data.synthetic_flags``, decision 52) as ``training.reproduce``
makes them: the main data painted again with extra generator flags into WORK/data/<tag>, with the same case
ids (so the same split) and the same source, anatomy map and phase per case; and a config's extra KiTS23 shapes
(``data.extra_cases``, decision 105) painted beside them, linked with them into one folder and split so that the
trained fold validates on the cases it validated on before."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

from .datasets.layouts import discover
from .datasets.splits import load_splits
from .stage_config import load_stage_config
from .step_runner import StepError


def own_data_flags(config: Path, args) -> Tuple[str, ...]:
    """A stage-2 config's ``data.synthetic_flags``; refused without --synthetic, which its cases repeat."""
    flags = load_stage_config(config).synthetic_flags
    if flags and not getattr(args, "synthetic", None):
        raise StepError(f"{config} trains on synthetic cases made with {' '.join(flags)}; give reproduce the "
                        "--synthetic N, --seed and --anatomy that made DATA_ROOT so it can make them (a DATA_ROOT "
                        "already made with them is kept, not made again).")
    return flags


def own_data_tag(flags: Sequence[str]) -> str:
    """The folder name of the cases made with generator ``flags`` (WORK/data/<tag>)."""
    return "_".join(f.lstrip("-").replace("-", "_") for f in flags)


def evaluation_data(final_config: Optional[Path], work: Path, data: Path) -> Path:
    """The cases the final stage 2 (trained with ``final_config``; None: the --quick smoke config) trained on:
    the config's own synthetic data if it names one, else DATA_ROOT. Its validation cases are held out from
    both stages."""
    flags = load_stage_config(final_config).synthetic_flags if final_config else ()
    return work / "data" / own_data_tag(flags) if flags else data


def check_same_cases(variant: Path, main: Path, splits_path: Path) -> None:
    """A stage's own cases are the main data painted again: the same case ids (so the same split) and, where
    the main data has its generator log, the same KiTS23 source, anatomy map and phase per case."""
    redo = f"give reproduce the --synthetic N, --seed and --anatomy that made {main}, and delete {variant}"
    try:
        load_splits(splits_path, [c.case_id for c in discover(variant)])
    except ValueError as exc:
        raise StepError(f"{exc} ({variant} was made with other settings than the main data: {redo})") from None
    if not (main / "synthetic.json").is_file():
        return
    a, b = (json.loads((d / "synthetic.json").read_text(encoding="utf-8"))["cases"] for d in (main, variant))
    what = {"source": lambda e: Path(e.get("source", "")).name, "anatomy": lambda e: Path(e.get("anatomy", "")).name,
            "phase": lambda e: e.get("phase")}
    for case_id, entry in sorted(b.items()):
        diff = [k for k, f in what.items() if f(entry) != f(a.get(case_id, {}))]
        if diff:
            raise StepError(f"{variant}: {case_id} has another {', '.join(diff)} than in {main}; {redo}.")


def plus_tag(tag: str, seed: int) -> str:
    """The folder name of a stage's own cases together with its extra shapes (WORK/data/<tag>_plus<seed>)."""
    return f"{tag}_plus{seed}"


def check_new_shapes(extra: Path, own: Path, wanted: Sequence[str]) -> None:
    """The extra cases are the config's KiTS23 ids, none of them a shape (or case) the own cases already use."""
    a, b = (json.loads((d / "synthetic.json").read_text(encoding="utf-8"))["cases"] for d in (own, extra))
    shapes = sorted(e.get("kits_case") for e in b.values())
    if shapes != sorted(wanted):
        raise StepError(f"{extra} holds the KiTS23 cases {shapes[:5]}..., not the config's extra_cases; delete it.")
    both = sorted(set(shapes) & {e.get("kits_case") for e in a.values()}) + sorted(set(a) & set(b))
    if both:
        raise StepError(f"The config's extra_cases repeat shapes or cases of {own}: {both[:5]}; choose other "
                        "KiTS23 ids.")


def link_cases(own: Path, extra: Path, out: Path) -> None:
    """OUT: links to every case folder of both, their merged generator log and the (equal) anatomy label list,
    so one cache (and its normalisation) is made from all the cases, as decision 102's run was."""
    out.mkdir(parents=True, exist_ok=True)
    logs = [json.loads((d / "synthetic.json").read_text(encoding="utf-8")) for d in (own, extra)]
    labels = {(d / "anatomy_labels.json").read_text(encoding="utf-8") for d in (own, extra)
              if (d / "anatomy_labels.json").is_file()}
    if len(labels) > 1:
        raise StepError(f"{own} and {extra} number the anatomy differently; make both with the same code.")
    for d, log in zip((own, extra), logs):
        for case in log["cases"]:
            link = out / case
            if not link.exists():
                os.symlink((d / case).resolve(), link, target_is_directory=True)
    if labels:
        (out / "anatomy_labels.json").write_text(labels.pop(), encoding="utf-8")
    merged = {**logs[0], "cases": {**logs[0]["cases"], **logs[1]["cases"]}, "parts": [str(own), str(extra)]}
    (out / "synthetic.json").write_text(json.dumps(merged, indent=1), encoding="utf-8")


def splits_with_extra(splits_path: Path, extra: Path, fold: int, out: Path) -> Path:
    """OUT: the main splits with the i-th case (sorted) of the EXTRA folder in the validation cases of fold (FOLD +
    1 + i mod (folds - 1)) mod folds: never FOLD's, so FOLD trains on every extra case and validates on the main
    cases it validated on before (for fold 0 of 8, decision 102's split). Written once; later runs read it (the
    painted cases may be gone by then) after checking it still extends the main splits."""
    main = [sorted(f["val"]) for f in load_splits(splits_path)]
    n = len(main)
    if not out.is_file():
        folds = [list(v) for v in main]
        ids = json.loads((extra / "synthetic.json").read_text(encoding="utf-8"))["cases"]
        for i, case in enumerate(sorted(ids)):
            folds[(fold + 1 + i % (n - 1)) % n].append(case)
        every = sorted(c for v in folds for c in v)
        splits = [{"train": sorted(set(every) - set(v)), "val": sorted(v)} for v in folds]
        out.write_text(json.dumps({"from": str(splits_path), "fold": fold, "n_folds": n, "folds": splits}, indent=1),
                       encoding="utf-8")
    got = json.loads(out.read_text(encoding="utf-8"))["folds"]
    if len(got) != n or got[fold]["val"] != main[fold] or not all(set(m) <= set(g["val"]) for m, g in zip(main, got)):
        raise StepError(f"{out} does not extend {splits_path} for fold {fold}; delete it to split again.")
    return out


def stage2_splits(config: Path, args, work: Path, splits_path: Path) -> Path:
    """The splits a stage-2 config trains with: the main ones, or with extra cases the main ones extended so that
    --fold trains on all of them and validates as before (``own_data.splits_with_extra``)."""
    cfg = load_stage_config(config)
    if not cfg.extra_cases:
        return splits_path
    own = own_data_tag(cfg.synthetic_flags)
    tag = plus_tag(own, cfg.extra_cases.seed)
    return splits_with_extra(splits_path, work / "data" / f"{own}_extra{cfg.extra_cases.seed}", args.fold,
                             work / f"splits_{tag}_fold{args.fold}.json")
