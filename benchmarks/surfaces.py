"""How well the STL surfaces (``--mesh``) lie on real label maps: KiTS23 ground truth, every segment.

Per segment (each kidney, tumor and cyst per side): watertight or not, enclosed volume vs voxel volume (%),
and the largest gap between the surface's LPS bounding box and the voxels' (their corners), in mm; time per
case. Prints a summary and the worst segments.
Usage: python benchmarks/surfaces.py [--labels ../shared/data/kits23/labels] [-n 40] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "KidneyTumorSeg"), str(REPO)]

from benchmarks.machine_info import machine  # noqa: E402
from KidneyTumorSegLib.image_io import read_labelmap  # noqa: E402
from KidneyTumorSegLib.segments import segments_from_labels  # noqa: E402
from KidneyTumorSegLib.surfaces import is_closed, segment_surfaces  # noqa: E402


def voxel_bounds(mask: np.ndarray, offset, geometry):
    ijk = (np.argwhere(mask) + np.asarray(offset))[:, ::-1].astype(float)
    corners = np.concatenate([geometry.index_to_physical(ijk + np.array(c) - 0.5) for c in np.ndindex(2, 2, 2)])
    return corners.min(axis=0), corners.max(axis=0)


def case_rows(path: Path) -> list:
    img = read_labelmap(path)
    seg_map, segments = segments_from_labels(img.array, img.geometry)
    t0 = time.perf_counter()
    surfaces = segment_surfaces(seg_map, segments, img.geometry)
    seconds = time.perf_counter() - t0
    boxes = ndimage.find_objects(seg_map)
    rows = []
    for seg, surf in zip(segments, surfaces):
        box = boxes[seg.value - 1]
        lo, hi = voxel_bounds(seg_map[box] == seg.value, [b.start for b in box], img.geometry)
        gap = max(np.abs(surf.bounds_lps[0] - lo).max(), np.abs(surf.bounds_lps[1] - hi).max())
        rows.append({"case": path.name.split(".")[0], "segment": seg.name, "voxel_ml": surf.voxel_volume_ml,
                     "volume_error_pct": 100 * (surf.volume_ml / surf.voxel_volume_ml - 1),
                     "bounds_gap_mm": float(gap), "closed": is_closed(surf.faces), "case_seconds": seconds})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--labels", type=Path, default=REPO.parent / "shared" / "data" / "kits23" / "labels")
    p.add_argument("-n", type=int, default=40, help="cases drawn at random (0: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    files = sorted(args.labels.glob("case_*.nii.gz"))
    if args.n:
        files = sorted(np.random.default_rng(args.seed).choice(files, size=min(args.n, len(files)), replace=False))
    rows = [r for f in files for r in case_rows(f)]
    err = np.abs([r["volume_error_pct"] for r in rows])
    gap = np.array([r["bounds_gap_mm"] for r in rows])
    secs = sorted({(r["case"], r["case_seconds"]) for r in rows})
    print(f"{len(files)} KiTS23 label maps, {len(rows)} segments ({machine()})")
    print(f"watertight: {sum(r['closed'] for r in rows)} of {len(rows)}")
    print(f"|volume error| %: median {np.median(err):.4f}, max {err.max():.3f}")
    print(f"bounds gap mm: median {np.median(gap):.2f}, 95th percentile {np.percentile(gap, 95):.2f}, "
          f"max {gap.max():.2f}")
    print(f"surfaces per case s: median {np.median([s for _, s in secs]):.2f}, max {max(s for _, s in secs):.2f}")
    for r in sorted(rows, key=lambda r: -r["bounds_gap_mm"])[:5]:
        print(f"  {r['case']} {r['segment']:<20} {r['voxel_ml']:9.3f} mL  volume {r['volume_error_pct']:+.3f} %  "
              f"bounds gap {r['bounds_gap_mm']:.2f} mm  closed {r['closed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
