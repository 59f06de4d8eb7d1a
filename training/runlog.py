"""Run logging: ``RUN_DIR/log.csv`` (one row per epoch) and a dependency-free progress bar on stderr."""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, TextIO

from KidneyTumorSegLib.atomic import write_csv
from KidneyTumorSegLib.labels import has_masses

LOSS_KEYS = ("total", "dice", "ce", "focal", "boundary_head")  # SegmentationLoss components
REGION = "val_dice_kidney_region"  # a stage 1 with masses: kidney and masses together, what its boxes are made of


def csv_extra(labels: Sequence[str]) -> List[str]:
    """Scores that ``training.validation.validate`` reports for these labels beyond each class's and their mean."""
    return [REGION] if has_masses(labels) else []


def csv_columns(labels: Sequence[str]) -> List[str]:
    return (["epoch", "iteration", "lr"] + [f"loss_{k}" for k in LOSS_KEYS] + ["val_dice_mean"]
            + [f"val_dice_{name}" for name in labels[1:]] + csv_extra(labels) + ["seconds"])


class CsvLog:
    """Appends one row per epoch; on resume, rows of epochs after the resumed one are dropped (they were
    written by an epoch whose checkpoint was never saved, and will be written again)."""

    def __init__(self, path: Path, labels: Sequence[str], resume_epoch: Optional[int] = None) -> None:
        self.path, self.columns = path, csv_columns(labels)
        rows: List[Dict[str, str]] = []
        if resume_epoch is not None and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= resume_epoch]
        write_csv(path, self.columns, ({k: r.get(k, "") for k in self.columns} for r in rows))

    def write(self, row: Dict[str, object]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(
                {k: _fmt(row.get(k)) for k in self.columns})


def _fmt(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


class Progress:
    """``epoch 3/100 [#####.....] 120/250 loss 0.512 2.1 it/s`` redrawn in place on a terminal; on a
    pipe (CI logs) one line per ~10 % so logs stay short."""

    def __init__(self, total: int, prefix: str, stream: TextIO = sys.stderr, enabled: bool = True) -> None:
        self.total, self.prefix, self.stream, self.enabled = max(total, 1), prefix, stream, enabled
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._last_decile = -1

    def update(self, done: int, loss: Optional[float] = None) -> None:
        if not self.enabled:
            return
        frac = done / self.total
        decile = int(frac * 10)
        if not self.tty and decile == self._last_decile and done != self.total:
            return
        self._last_decile = decile
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        bar = "#" * int(frac * 20) + "." * (20 - int(frac * 20))
        text = f"{self.prefix} [{bar}] {done}/{self.total}"
        if loss is not None:
            text += f" loss {loss:.4f}"
        text += f" {rate:.2f} it/s"
        self.stream.write(("\r" + text) if self.tty else text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:  # end the in-place line
            self.stream.write("\n")
            self.stream.flush()


def message(text: str, enabled: bool = True) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)
