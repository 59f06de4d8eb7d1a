"""Resumable, checksum-verified downloads (urllib only) and the KiTS23 imaging download.

    python -m training.download kits23 -o DATA_ROOT [--cases 0-299,400-588] [--manifest FILE]
        [--write-manifest FILE] [--labels-from KITS23_CLONE] [--retries 3] [--base-url URL]

KiTS23 imaging comes from the URL pattern the official ``neheller/kits23`` package uses
(``kits23/download.py``): ``https://kits19.sfo2.digitaloceanspaces.com/master_{case:05d}.nii.gz`` ->
``DATA_ROOT/case_{case:05d}/imaging.nii.gz``. The organisers publish NO checksums for these files, so
integrity is checked by the HTTP length and, optionally, a manifest of SHA-256 per case (``sha256sum``
format) that you write once with ``--write-manifest`` after a first download you trust, and pass with
``--manifest`` on every later download (other machines, re-downloads). The label maps are not on that
host: they are in the kits23 git repository (``git clone https://github.com/neheller/kits23``, folder
``dataset/case_XXXXX/segmentation.nii.gz``); ``-o kits23/dataset`` puts the images beside them, or
``--labels-from`` copies them into DATA_ROOT. Data license: CC BY-NC-SA 4.0.

``download()`` (resumable, verified before the final rename) lives in ``KidneyTumorSegLib.download``, which
the extension also uses for model files.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from KidneyTumorSegLib.atomic import atomic_output, write_text
from KidneyTumorSegLib.download import (DownloadError, IncompleteDownloadError, Progress, UnreachableError,
                                        download, sha256_file)

KITS23_BASE_URL = "https://kits19.sfo2.digitaloceanspaces.com/"
KITS23_NAME = "master_{:05d}.nii.gz"
# Training cases of the public KiTS23 release (00300-00399 do not exist; 489 cases, as in the kits23
# repository's dataset/ folder at release 0.1.3).
KITS23_CASES = "0-299,400-588"
KITS23_REPO = "https://github.com/neheller/kits23"
PathLike = Union[str, os.PathLike]


def parse_cases(spec: str) -> List[int]:
    """'0-299,400-588' or '3,5,7-9' -> sorted case numbers."""
    out = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise ValueError(f"Bad case list item {item!r}; use numbers and ranges such as 0-299,400-588.")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"Bad case range {item!r}: the end is below the start.")
        out.update(range(lo, hi + 1))
    return sorted(out)


def case_id(n: int) -> str:
    return f"case_{n:05d}"


def read_manifest(path: PathLike) -> Dict[str, str]:
    """``sha256sum`` format: 'HEX  case_00000/imaging.nii.gz' per line -> {relative path: hex}."""
    out = {}
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{64}) [ *]?(.+)", line.strip())
        if not m:
            raise ValueError(f"{path}:{i}: not a 'SHA256  PATH' line: {line!r}")
        out[m.group(2).strip()] = m.group(1).lower()
    return out


def write_manifest(path: PathLike, hashes: Dict[str, str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "".join(f"{h}  {rel}\n" for rel, h in sorted(hashes.items())))


def copy_labels(source: PathLike, root: Path, cases: Sequence[int]) -> int:
    """Copy KiTS23 label maps from a kits23 clone (or its dataset/, or flat case_X.nii.gz) into root."""
    src = Path(source)
    base = src / "dataset" if (src / "dataset").is_dir() else src
    copied = 0
    for n in cases:
        cid = case_id(n)
        target = root / cid / "segmentation.nii.gz"
        found = next((p for p in (base / cid / "segmentation.nii.gz", base / f"{cid}.nii.gz") if p.is_file()), None)
        if found is None or target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target) as tmp:
            shutil.copyfile(found, tmp)
        copied += 1
    return copied


def _bar(name: str) -> Progress:
    last = [0.0]

    def show(done: int, total: Optional[int]) -> None:
        now = time.monotonic()
        if now - last[0] < 0.5 and (total is None or done < total):
            return
        last[0] = now
        pct = f"{100 * done / total:5.1f}%" if total else "     "
        print(f"\r  {name}: {pct} {done / 1e6:8.1f} MB", end="", file=sys.stderr, flush=True)
    return show


def download_kits23(root: PathLike, cases: Sequence[int], manifest: Optional[Dict[str, str]] = None,
                    base_url: str = KITS23_BASE_URL, retries: int = 3, quiet: bool = False) -> List[str]:
    """Fetch ``case_X/imaging.nii.gz`` for each case; returns the failures (messages). Stops at once when
    the host cannot be reached (every other case would fail the same way)."""
    root = Path(root)
    failures = []
    for i, n in enumerate(cases, 1):
        rel = f"{case_id(n)}/imaging.nii.gz"
        url = base_url.rstrip("/") + "/" + KITS23_NAME.format(n)
        sha = (manifest or {}).get(rel)
        if manifest is not None and sha is None:
            failures.append(f"{rel}: not in the manifest; skipped (add it, or run without --manifest).")
            continue
        for attempt in range(retries + 1):
            try:
                if not quiet:
                    print(f"[{i}/{len(cases)}] {rel}", file=sys.stderr)
                download(url, root / rel, sha256=sha, progress=None if quiet else _bar(rel))
                if not quiet:
                    print(file=sys.stderr)
                break
            except UnreachableError:
                raise
            except IncompleteDownloadError as exc:
                if attempt == retries:
                    failures.append(str(exc))
                else:
                    time.sleep(min(2 ** attempt, 30))  # resume after a short back-off
            except DownloadError as exc:
                failures.append(str(exc))
                break
    return failures


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.download", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="dataset", required=True)
    k = sub.add_parser("kits23", help="KiTS23 imaging (labels: git clone " + KITS23_REPO + ")")
    k.add_argument("-o", "--output", required=True, type=Path, help="DATA_ROOT (case_XXXXX/imaging.nii.gz)")
    k.add_argument("--cases", default=KITS23_CASES, help="case numbers, e.g. 0-9 or 0-299,400-588 (default: all)")
    k.add_argument("--manifest", type=Path, help="sha256sum-style file to verify against")
    k.add_argument("--write-manifest", type=Path, help="after downloading, write the SHA-256 of every file here")
    k.add_argument("--labels-from", type=Path, help="kits23 clone (or its dataset/) to copy segmentations from")
    k.add_argument("--retries", type=int, default=3, help="resume attempts per file after a cut connection")
    k.add_argument("--base-url", default=KITS23_BASE_URL, help="mirror of the imaging files")
    args = p.parse_args(argv)
    try:
        cases = parse_cases(args.cases)
        manifest = read_manifest(args.manifest) if args.manifest else None
    except (ValueError, OSError) as exc:
        p.error(str(exc))
    try:
        failures = download_kits23(args.output, cases, manifest, args.base_url, args.retries)
    except UnreachableError as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted: finished files are complete and verified; rerun to resume the rest.", file=sys.stderr)
        return 130
    if args.labels_from:
        print(f"copied {copy_labels(args.labels_from, args.output, cases)} label maps from {args.labels_from}",
              file=sys.stderr)
    if args.write_manifest:
        hashes = {f"{case_id(n)}/imaging.nii.gz": sha256_file(args.output / case_id(n) / "imaging.nii.gz")
                  for n in cases if (args.output / case_id(n) / "imaging.nii.gz").is_file()}
        write_manifest(args.write_manifest, hashes)
        print(f"wrote {len(hashes)} checksums to {args.write_manifest}", file=sys.stderr)
    missing = [case_id(n) for n in cases if not (args.output / case_id(n) / "segmentation.nii.gz").is_file()]
    if missing:
        print(f"{len(missing)} case(s) have no segmentation.nii.gz yet (e.g. {missing[0]}): the labels come from "
              f"git clone {KITS23_REPO} (dataset/case_XXXXX/segmentation.nii.gz); pass --labels-from CLONE or "
              "download into CLONE/dataset.", file=sys.stderr)
    for msg in failures:
        print(f"FAILED {msg}", file=sys.stderr)
    print(f"{len(cases) - len(failures)} of {len(cases)} images ready in {args.output}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
