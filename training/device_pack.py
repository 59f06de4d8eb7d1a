"""Pack what ``training/device_run.sh`` needs on a lent GPU machine that has no internet and no ../shared:
``.carry/data`` (anatomy maps, the smallest KiTS23 label maps within a byte budget, the small real CTs) and
``.carry/wheels/simpleitk.tar.xz`` (SimpleITK, which that machine lacks, re-packed with xz: the wheel alone
is 53 MB, and a call carries 64 MiB in all, the repository included).

    python -m training.device_pack [--data ../shared/data] [--budget-mb 40] [--wheel SIMPLEITK.whl]

Then name ``.carry`` in the device tool's ``carry`` and run ``bash training/device_run.sh --data .carry/data``.
``.carry/`` is git-ignored: it is never committed.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL_REAL = ("ct/example_ct_kidney_left.nii.gz", "ct/example_ct_kidney_right.nii.gz", "real_ct/totalseg_s0009")


def pack_data(src: Path, dst: Path, budget: int) -> int:
    """Copy anatomy/, the small real CTs, then KiTS23 label maps smallest first until ``budget`` bytes."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src / "anatomy", dst / "anatomy")
    for rel in SMALL_REAL:
        if (src / rel).exists():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (src / rel).is_dir() else shutil.copy2)(src / rel, dst / rel)
    used = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    (dst / "kits23" / "labels").mkdir(parents=True)
    for f in sorted((src / "kits23" / "labels").glob("case_*.nii.gz"), key=lambda f: f.stat().st_size):
        if used + f.stat().st_size > budget:
            break
        shutil.copy2(f, dst / "kits23" / "labels" / f.name)
        used += f.stat().st_size
    return used


def pack_wheel(wheel: Path, dst: Path) -> Path:
    """The wheel's files as a tar.xz that ``tar xJf ... -C SITE`` installs (site-packages layout)."""
    dst.mkdir(parents=True, exist_ok=True)
    out = dst / "simpleitk.tar.xz"
    with tempfile.TemporaryDirectory() as tmp:
        zipfile.ZipFile(wheel).extractall(tmp)
        subprocess.run(["tar", "cJf", str(out), "-C", tmp, "."], check=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--budget-mb", type=float, default=40.0, help="data size limit, MB (all of .carry/data)")
    p.add_argument("--wheel", type=Path, help="a SimpleITK manylinux wheel for the GPU machine's Python "
                   "(pip download --no-deps --only-binary=:all: --python-version 3.12 ... SimpleITK)")
    p.add_argument("-o", "--output", type=Path, default=REPO / ".carry")
    args = p.parse_args(argv)
    used = pack_data(args.data, args.output / "data", int(args.budget_mb * 1e6))
    n = len(list((args.output / "data" / "kits23" / "labels").glob("*.nii.gz")))
    print(f"{args.output / 'data'}: {used / 1e6:.1f} MB, {n} KiTS23 label maps")
    if args.wheel:
        out = pack_wheel(args.wheel, args.output / "wheels")
        print(f"{out}: {out.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
