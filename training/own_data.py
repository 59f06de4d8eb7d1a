"""A stage config's own synthetic cases (its ``data.synthetic_flags``, decision 52) as ``training.reproduce``
makes them: the main data painted again with extra generator flags into WORK/data/<tag>, with the same case
ids (so the same split) and the same source, anatomy map and phase per case."""
from __future__ import annotations

import json
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
