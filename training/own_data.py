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

from KidneyTumorSegLib.atomic import write_text

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
    a, b = (_log(d)["cases"] for d in (main, variant))
    what = {"source": lambda e: Path(e.get("source", "")).name, "anatomy": lambda e: Path(e.get("anatomy", "")).name,
            "phase": lambda e: e.get("phase")}
    for case_id, entry in sorted(b.items()):
        diff = [k for k, f in what.items() if f(entry) != f(a.get(case_id, {}))]
        if diff:
            raise StepError(f"{variant}: {case_id} has another {', '.join(diff)} than in {main}; {redo}.")


def plus_tag(tag: str, seed: int) -> str:
    """The folder name of a stage's own cases together with its extra shapes (WORK/data/<tag>_plus<seed>)."""
    return f"{tag}_plus{seed}"


def extra_tag(tag: str, seed: int) -> str:
    """The folder name of the extra shapes alone (WORK/data/<tag>_extra<seed>)."""
    return f"{tag}_extra{seed}"


def _log(folder: Path) -> dict:
    return json.loads((folder / "synthetic.json").read_text(encoding="utf-8"))


def check_new_shapes(own: Path, wanted: Sequence[str]) -> None:
    """Before painting: none of the config's extra KiTS23 ids is a shape the own cases already use."""
    both = sorted(set(wanted) & {e.get("kits_case") for e in _log(own)["cases"].values()})
    if both:
        raise StepError(f"The config's extra_cases repeat shapes of {own}: {both[:5]}; choose other KiTS23 ids.")


def check_painted(extra: Path, own: Path, wanted: Sequence[str]) -> None:
    """After painting: the extra cases are the config's KiTS23 ids, and no case id is one of the own cases'."""
    cases = _log(extra)["cases"]
    shapes = sorted(e.get("kits_case") for e in cases.values())
    if shapes != sorted(wanted):
        raise StepError(f"{extra} holds the KiTS23 cases {shapes[:5]}..., not the config's extra_cases; delete it.")
    both = sorted(set(cases) & set(_log(own)["cases"]))
    if both:
        raise StepError(f"{extra} repeats case ids of {own}: {both[:5]}; delete it.")


def paint_extra(run, cmd, own: Path, more: Path, out: Path, wanted: Sequence[str]) -> None:
    """The extra-cases step: checks, the painting (``cmd`` into MORE), checks, then OUT links both."""
    if not (own / "synthetic.json").is_file():
        raise StepError(f"{own} is gone; delete {run.work / 'steps' / f'data_{own.name}.json'} to paint it again.")
    check_new_shapes(own, wanted)
    run.run(cmd)
    check_painted(more, own, wanted)
    link_cases(own, more, out)


def link_cases(own: Path, extra: Path, out: Path) -> None:
    """OUT: relative links to every case folder of both (and nothing else), their merged generator log and the
    (equal) anatomy label list, so one cache (and its normalisation) is made from all the cases, as decision 102's
    run was. Links left by another list of cases are removed; a folder or file that is not such a link is refused."""
    out.mkdir(parents=True, exist_ok=True)
    logs = [_log(d) for d in (own, extra)]
    labels = {(d / "anatomy_labels.json").read_text(encoding="utf-8") for d in (own, extra)
              if (d / "anatomy_labels.json").is_file()}
    if len(labels) > 1:
        raise StepError(f"{own} and {extra} number the anatomy differently; make both with the same code.")
    want = {case: os.path.relpath(d / case, out) for d, log in zip((own, extra), logs) for case in log["cases"]}
    for entry in out.iterdir():
        if entry.name in ("synthetic.json", "anatomy_labels.json") or entry.name.startswith("."):
            continue  # (a dot file: an interrupted atomic write's temporary file)
        if not entry.is_symlink():
            raise StepError(f"{entry} is not a link made by reproduce; delete {out} to link the cases again.")
        if os.readlink(entry) != want.get(entry.name):
            entry.unlink()  # another case list, or a target that moved
    for case, target in want.items():
        if not (out / case).is_symlink():
            os.symlink(target, out / case, target_is_directory=True)
    if labels:
        write_text(out / "anatomy_labels.json", labels.pop())
    merged = {**logs[0], "cases": {**logs[0]["cases"], **logs[1]["cases"]}, "parts": [str(own), str(extra)]}
    write_text(out / "synthetic.json", json.dumps(merged, indent=1))


def splits_with_extra(splits_path: Path, extra: Path, key: dict, fold: int, out: Path) -> Path:
    """OUT: the main splits with the i-th case (sorted) of the EXTRA folder in the validation cases of fold (FOLD +
    1 + i mod (folds - 1)) mod folds: never FOLD's, so FOLD trains on every extra case and validates on the main
    cases it validated on before (for fold 0 of 8, decision 102's split). Written once with ``key`` (the config's
    extra seed and ids); later runs read it (the painted cases may be gone by then) after checking the key and
    that it still extends the main splits."""
    main = [sorted(f["val"]) for f in load_splits(splits_path)]
    n = len(main)
    if not out.is_file():
        folds = [list(v) for v in main]
        for i, case in enumerate(sorted(_log(extra)["cases"])):
            folds[(fold + 1 + i % (n - 1)) % n].append(case)
        every = sorted(c for v in folds for c in v)
        splits = [{"train": sorted(set(every) - set(v)), "val": sorted(v)} for v in folds]
        write_text(out, json.dumps({"from": str(splits_path), "fold": fold, "n_folds": n, "extra_cases": key,
                                    "folds": splits}, indent=1))
    redo = f"delete {out} to split again"
    try:
        stored = json.loads(out.read_text(encoding="utf-8"))
    except ValueError:
        raise StepError(f"{out} is not a readable splits file; {redo}.") from None
    if stored.get("extra_cases") != key:
        raise StepError(f"{out} was split for other extra_cases than the config's; {redo}.")
    got = stored["folds"]
    if len(got) != n or got[fold]["val"] != main[fold] or not all(set(m) <= set(g["val"]) for m, g in zip(main, got)):
        raise StepError(f"{out} does not extend {splits_path} for fold {fold}; {redo}.")
    return out


def stage2_splits(config: Path, args, work: Path, splits_path: Path) -> Path:
    """The splits a stage-2 config trains with: the main ones, or with extra cases the main ones extended so that
    --fold trains on all of them and validates as before (``own_data.splits_with_extra``)."""
    cfg = load_stage_config(config)
    if not cfg.extra_cases:
        return splits_path
    own = own_data_tag(cfg.synthetic_flags)
    tag = plus_tag(own, cfg.extra_cases.seed)
    return splits_with_extra(splits_path, work / "data" / extra_tag(own, cfg.extra_cases.seed),
                             extra_key(cfg.extra_cases), args.fold, work / f"splits_{tag}_fold{args.fold}.json")


def extra_key(extra) -> dict:
    """What identifies a config's extra cases in the steps and split files made from them."""
    return {"seed": extra.seed, "kits23": list(extra.kits23)}


def extra_provenance(config: Optional[Path], args, work: Path, splits_path: Path) -> str:
    """The release's words for a final stage 2 trained with extra cases ('' for one without)."""
    extra = load_stage_config(config).extra_cases if config else None
    if not extra:
        return ""
    fold = json.loads(stage2_splits(config, args, work, splits_path).read_text(encoding="utf-8"))["folds"][args.fold]
    return (f"; stage 2 also on {len(extra.kits23)} more KiTS23 shapes (data.extra_cases, seed {extra.seed}): "
            f"{len(fold['train'])} train / {len(fold['val'])} validation")
