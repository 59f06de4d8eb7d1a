"""Pack what ``training/device_run.sh`` needs on a lent GPU machine that has no internet and no ../shared:
``.carry/data`` (two xz archives: the training anatomy maps and the small real CTs, then the smallest KiTS23
label maps within a byte budget) and ``.carry/wheels/simpleitk.tar.xz`` (SimpleITK, which that machine lacks,
re-packed with xz: the wheel alone is 53 MB, 29 MB as tar.xz, and a call carries 64 MiB in all, the repository
included: 24 MB with v5, so the data gets 13 MB). Inside the archives every ``.nii.gz`` is written stored (gzip
level 0, still a valid .nii.gz that the readers take as it is), so that xz compresses the voxels themselves: the
fixed files take 8.9 MB instead of 12 as level-9 gzip, which leaves room for 347 KiTS23 maps instead of 69.
The KiTS23 maps are also cut to their kidneys (``crop_to_kidneys``: about 2.5 times smaller) in a way the
real-anatomy painter cannot tell from the whole map.

    python -m training.device_pack [--data ../shared/data] [--budget-mb MB] [--wheel SIMPLEITK.whl]

Then name ``.carry`` in the device tool's ``carry`` and run ``bash training/device_run.sh --data .carry/data``
(it unpacks the archives first). ``.carry/`` is git-ignored: it is never committed.
"""
from __future__ import annotations

import argparse
import gzip
import json
import lzma
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KidneyTumorSegLib.preprocessing import axis_permutation

REPO = Path(__file__).resolve().parents[1]
SMALL_REAL = ("ct/example_ct.nii.gz", "ct/example_ct_kidney_left.nii.gz", "ct/example_ct_kidney_right.nii.gz",
              "real_ct/totalseg_s0009")  # the real-CT benchmark's CTs but 3D-IRCADb's (too large to carry)
HELD_OUT_FLARE = {f"FLARE22_Tr_{i:04d}.nii.gz" for i in range(43, 51)}  # the held-out test set's: not trained on
HELD_OUT_KITS_FILE = REPO / "benchmarks" / "held_out_kits23.json"  # and its KiTS23 cases
MISSES = 10  # KiTS23 maps tried in a row without one fitting before the packing stops
ARCHIVE_SLACK = 4096  # bytes kept for an archive's own headers (tar's, xz's) beside the maps' xz sizes


def _copy(src: Path, dst: Path) -> None:
    """Copy one file, a .gz re-written stored (gzip level 0, mtime 0: the same bytes each time): the voxels as they
    are, which the archive's xz then compresses better than any gzip level would."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.name.endswith(".gz"):
        with gzip.open(src, "rb") as fin, gzip.GzipFile(dst, "wb", compresslevel=0, mtime=0) as fout:
            shutil.copyfileobj(fin, fout, 1 << 24)
    else:
        shutil.copy2(src, dst)


def archive(folder: Path, out: Path) -> int:
    """``folder``'s contents as ``out`` (tar.xz, xz -9 on every core; names sorted, times and owners fixed, so the
    same files give the same bytes on one machine); its size. ``tar -xJf out -C DIR`` gives them back."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tar = ["tar", "-cf", "-", "--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner",
           "-C", str(folder), "."]
    with out.open("wb") as f:
        producer = subprocess.Popen(tar, stdout=subprocess.PIPE)
        xz = subprocess.Popen(["xz", "-9", "-T0", "-c"], stdin=producer.stdout, stdout=f)
        producer.stdout.close()  # xz alone reads the pipe, so tar stops (SIGPIPE) should xz fail: no hang
        xz_rc, tar_rc = xz.wait(), producer.wait()
    if xz_rc or tar_rc:
        raise subprocess.CalledProcessError(xz_rc or tar_rc, "xz" if xz_rc else tar)
    return out.stat().st_size


def crop_to_kidneys(src: Path, dst: Path, level: int = 9) -> int:
    """Write the KiTS23 label map ``src`` cut to the box of its labels (gzip ``level``, mtime 0); its size.

    What the real-anatomy painter reads of a map (``training.synth_real.kits_kidneys``: each kidney's labels, sides
    and sizes) stays the same, positions within 1e-5 mm (NIfTI stores the moved origin in float32): the box keeps
    its voxels in place, and along the left-right axis (as ``reorient`` finds it) the cut is symmetric about the
    map's centre, which decides the side of a lone kidney. For that painter only: the invented-anatomy painter
    (no ``--anatomy``) paints the map's whole field of view. A map without labels is copied whole."""
    img = sitk.ReadImage(str(src))
    fg = np.argwhere(sitk.GetArrayViewFromImage(img) > 0)[:, ::-1]  # (x, y, z) indices
    if len(fg):
        lo, hi, n = fg.min(0), fg.max(0) + 1, np.array(img.GetSize())
        lr = axis_permutation(np.array(img.GetDirection()).reshape(3, 3))[0][0]  # the index axis reorient puts L-R
        lo[lr] = min(lo[lr], n[lr] - hi[lr])
        hi[lr] = n[lr] - lo[lr]
        img = img[int(lo[0]):int(hi[0]), int(lo[1]):int(hi[1]), int(lo[2]):int(hi[2])]  # slicing moves the origin
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "map.nii"
        sitk.WriteImage(img, str(raw), False)
        with raw.open("rb") as fin, gzip.GzipFile(dst, "wb", compresslevel=level, mtime=0) as fout:
            shutil.copyfileobj(fin, fout, 1 << 24)
    return dst.stat().st_size


def xz_share(src: Path, dst: Path) -> int:
    """Write the KiTS23 map ``src`` cut to its kidneys and stored (gzip level 0) as ``dst``, as it goes into the
    archive; its own xz size, what ``pack_data`` counts for it against the budget."""
    crop_to_kidneys(src, dst, level=0)
    return len(lzma.compress(dst.read_bytes(), preset=9))


def pack_data(src: Path, dst: Path, budget: int) -> tuple:
    """Write ``dst/fixed.tar.xz`` (anatomy/ less the held-out FLARE22 maps, the small real CTs) and
    ``dst/kits23.tar.xz`` (KiTS23 label maps but the held-out test set's, cut to their kidneys, smallest source
    first, each one that fits in ``budget`` bytes with the rest, stopping after ``MISSES`` in a row that do not);
    (bytes in all, KiTS23 maps).

    A map's share is judged by its own xz size; should the archive come out larger (tar's headers), the last maps
    are dropped and it is made again."""
    if dst.exists():
        shutil.rmtree(dst)
    with tempfile.TemporaryDirectory() as tmp:
        fixed, kits = Path(tmp) / "fixed", Path(tmp) / "kits"
        files = [f for f in sorted((src / "anatomy").rglob("*")) if f.is_file() and f.name not in HELD_OUT_FLARE]
        for rel in SMALL_REAL:
            files += [src / rel] if (src / rel).is_file() else sorted(f for f in (src / rel).rglob("*") if f.is_file())
        for f in files:
            _copy(f, fixed / f.relative_to(src))
        used = archive(fixed, dst / "fixed.tar.xz")
        labels = kits / "kits23" / "labels"
        labels.mkdir(parents=True)
        added, misses, share = [], 0, 0
        held_out = set(json.loads(HELD_OUT_KITS_FILE.read_text(encoding="utf-8"))["cases"])
        for f in sorted((src / "kits23" / "labels").glob("case_*.nii.gz"), key=lambda f: f.stat().st_size):
            if f.name.split(".")[0] in held_out:
                continue
            out = labels / f.name
            size = xz_share(f, out)
            if used + ARCHIVE_SLACK + share + size > budget:
                out.unlink()
                misses += 1
                if misses == MISSES:
                    break
                continue
            added, share, misses = added + [(out, size)], share + size, 0
        n = len(added)
        while n:  # tar's headers can make the archive a little larger than its maps' own xz sizes: drop the last
            kits_size = archive(kits, dst / "kits23.tar.xz")
            over = used + kits_size - budget
            if over <= 0:
                used += kits_size
                break
            while over > 0 and added:
                out, size = added.pop()
                out.unlink()
                over -= size
            n = len(added)
        if not n:
            (dst / "kits23.tar.xz").unlink(missing_ok=True)
    return used, n


def pack_wheel(wheel: Path, dst: Path) -> Path:
    """The wheel's files as a tar.xz that ``tar xJf ... -C SITE`` installs (site-packages layout)."""
    dst.mkdir(parents=True, exist_ok=True)
    out = dst / "simpleitk.tar.xz"
    with tempfile.TemporaryDirectory() as tmp:
        zipfile.ZipFile(wheel).extractall(tmp)
        subprocess.run(["tar", "cJf", str(out), "-C", tmp, "."], check=True)
    return out


CARRY_LIMIT = 64 * 2**20  # what one device call carries, the working tree included


def default_budget(wheels: Path) -> int:
    """What the data's archives may take: the call's limit less the tracked files (the repository as it
    travels), the packed wheels and 1 MB of slack for untracked files."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    tracked = sum((REPO / n).stat().st_size for n in listed.decode().split("\0") if n and (REPO / n).is_file())
    packed = sum(f.stat().st_size for f in wheels.glob("*") if f.is_file()) if wheels.is_dir() else 0
    return CARRY_LIMIT - tracked - packed - 1_000_000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--budget-mb", type=float, help="data size limit, MB (all of .carry/data); default: 64 MiB "
                   "less the repository's tracked files, the packed wheels and 1 MB")
    p.add_argument("--wheel", type=Path, help="a SimpleITK manylinux wheel for the GPU machine's Python "
                   "(pip download --no-deps --only-binary=:all: --python-version 3.12 ... SimpleITK)")
    p.add_argument("-o", "--output", type=Path, default=REPO / ".carry")
    args = p.parse_args(argv)
    if args.wheel:  # first: the data's default budget leaves room for it
        out = pack_wheel(args.wheel, args.output / "wheels")
        print(f"{out}: {out.stat().st_size / 1e6:.1f} MB")
    budget = int(args.budget_mb * 1e6) if args.budget_mb is not None else default_budget(args.output / "wheels")
    used, n = pack_data(args.data, args.output / "data", budget)
    print(f"{args.output / 'data'}: {used / 1e6:.1f} MB (budget {budget / 1e6:.1f}), {n} KiTS23 label maps")
    if n == 0 or used > budget:  # the anatomy maps and real CTs alone fill it: the device call would fail
        print(f"device_pack: the data ({used / 1e6:.1f} MB, {n} KiTS23 maps) does not fit its {budget / 1e6:.1f} MB: "
              "free room in the repository or pass a larger --budget-mb after checking the 64 MiB limit",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
