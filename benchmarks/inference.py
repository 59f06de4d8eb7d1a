"""Speed and peak memory of the cascade, end to end (read -> written), beside a single-stage alternative.

Cases: (a) the real CT in ../shared/data/ct (3 mm); (b) a full-size CT made from it (resampled to
0.8 x 0.8 mm in-plane, 1.0 mm slices: about 457 x 378 x 336 voxels here). The alternative is what users
would otherwise run: one nnU-Net-sized 3D U-Net (MONAI DynUNet, 6 levels, 32-320 filters, 128^3 patch,
random weights: this is about speed) sliding over the whole full-resolution CT at overlap 0.5. It is far
too slow to run whole on a CPU, so its time is measured on ``--alt-windows`` windows and multiplied by its
window count (printed as "estimated").

With ``--model`` (a registered name or a folder with stage1.pt/stage2.pt) the real cascade runs. Without
trained models, random-weight networks of training/configs/stage{1,2}_default.json are timed, and since a
random stage 1 finds no kidney, the stage-2 boxes come from the example CT's reference kidney masks
("oracle boxes"): every network, resampling and writing step still runs at its real size.

Each case runs in a fresh subprocess; peak memory is that process's maximum resident set size.
Usage: python benchmarks/inference.py [--model NAME|DIR] [--device cpu|cuda] [--alt-windows 3] [--ct-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ct"
sys.path.insert(0, str(REPO / "KidneyTumorSeg"))
sys.path.insert(0, str(REPO))

from benchmarks.machine_info import machine  # noqa: E402


def make_full_size(src: Path, dst: Path) -> None:
    import SimpleITK as sitk
    img = sitk.ReadImage(str(src))
    spacing = (0.8, 0.8, 1.0)
    size = [int(round(n * s / t)) for n, s, t in zip(img.GetSize(), img.GetSpacing(), spacing)]
    out = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), spacing,
                        img.GetDirection(), -1024, sitk.sitkInt16)
    sitk.WriteImage(out, str(dst), useCompression=True)
    for side in ("left", "right"):
        mask = sitk.ReadImage(str(src.parent / f"example_ct_kidney_{side}.nii.gz"))
        m = sitk.Resample(mask, size, sitk.Transform(), sitk.sitkNearestNeighbor, img.GetOrigin(), spacing,
                          img.GetDirection(), 0, sitk.sitkUInt8)
        sitk.WriteImage(m, str(dst.parent / f"{dst.name[:-7]}_kidney_{side}.nii.gz"), useCompression=True)


def _random_models(folder: Path) -> Path:
    from KidneyTumorSegLib.checkpoint import save_checkpoint
    from training.stage_config import load_stage_config
    for stage in (1, 2):
        cfg = load_stage_config(f"stage{stage}_default")
        save_checkpoint(folder / f"stage{stage}.pt", cfg.network_name, cfg.network, cfg.build(), cfg.labels,
                        cfg.preprocessing, cfg.patch_size, provenance={"weights": "random (benchmark)"})
    return folder


def _oracle_cascade(cascade, ct_path: Path):
    """Stage-2 boxes from the reference kidney masks (for untrained, random-weight models), cut by the stage-2
    config's box rule exactly as the training cache cuts them (``network_input.reference_boxes``)."""
    import numpy as np
    from KidneyTumorSegLib.cascade import Cascade
    from KidneyTumorSegLib.image_io import read_labelmap
    from KidneyTumorSegLib.network_input import reference_boxes
    from KidneyTumorSegLib.preprocessing import reorient
    stem = ct_path.name[:-7]
    masks = [read_labelmap(ct_path.parent / f"{stem}_kidney_{s}.nii.gz") for s in ("left", "right")]
    ref = np.maximum(masks[0].array, masks[1].array)

    class OracleBoxes(Cascade):
        def kidney_boxes(self, mask1, grid1, grid, midline_x=None):
            labels, g, _ = reorient(ref, masks[0].geometry, self.stage2.preprocessing.orientation)
            if not g.is_close(grid, atol=1e-3):
                raise ValueError(f"The reference masks of {ct_path} do not lie on the CT's voxel grid.")
            return reference_boxes(labels, grid, self.stage2.preprocessing)

    return OracleBoxes(cascade.stage1, cascade.stage2, cascade.config, cascade.device)


def worker_cascade(ct: Path, model: str, device: str, oracle: bool, box_growth=None) -> dict:
    from KidneyTumorSegLib.pipeline import SegmentOptions, load_cascade, segment_case
    options = SegmentOptions(model=model, device=device, box_growth=box_growth)
    cascade = load_cascade(options)
    if oracle:
        cascade = _oracle_cascade(cascade, ct)
    with tempfile.TemporaryDirectory() as out:
        result = segment_case(ct, out, cascade, options)
    return {"timings": result.timings, "volumes_ml": result.volumes_ml,
            "stage2_mirror_axes": list(cascade.config.stage2_mirror_axes)}


def worker_alternative(ct: Path, device: str, n_windows: int) -> dict:
    import numpy as np
    import torch
    from monai.networks.nets import DynUNet
    from KidneyTumorSegLib.image_io import read_image
    from KidneyTumorSegLib.inference import compute_window_starts, resolve_device
    dev = resolve_device(device)
    image = read_image(ct)
    net = DynUNet(3, 1, 4, kernel_size=[3] * 6, strides=[1, 2, 2, 2, 2, 2], upsample_kernel_size=[2] * 5,
                  filters=[32, 64, 128, 256, 320, 320], norm_name="instance", deep_supervision=False,
                  res_block=True).to(dev).eval()
    patch = 128
    windows = int(np.prod([len(compute_window_starts(max(n, patch), patch, 0.5)) for n in image.array.shape]))
    x = torch.randn(1, 1, patch, patch, patch, device=dev)
    with torch.inference_mode():
        net(x)  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n_windows):
            net(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    per_window = (time.perf_counter() - t0) / n_windows
    params = sum(p.numel() for p in net.parameters())
    return {"windows": windows, "per_window_s": per_window, "estimated_total_s": per_window * windows,
            "parameters": params}


def _run(args: list) -> dict:
    out = subprocess.run([sys.executable, __file__] + args, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="registered model or folder; default: random-weight default configs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--alt-windows", type=int, default=3, help="0: leave the alternative out")
    ap.add_argument("--ct-dir", type=Path, default=DATA, help="folder with example_ct*.nii.gz (default %(default)s)")
    ap.add_argument("--box-growth", type=int, help="stage-2 box growths (CascadeConfig.box_growth; default: its own)")
    ap.add_argument("--worker", choices=["cascade", "alternative"], help=argparse.SUPPRESS)
    ap.add_argument("--ct", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--oracle", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        if args.worker == "cascade":
            res = worker_cascade(args.ct, args.model, args.device, args.oracle, args.box_growth)
        else:
            res = worker_alternative(args.ct, args.device, args.alt_windows)
        res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return

    import torch
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        full = tmp / "full_size_ct.nii.gz"
        make_full_size(args.ct_dir / "example_ct.nii.gz", full)
        small = tmp / "example_ct.nii.gz"
        small.symlink_to(args.ct_dir.resolve() / "example_ct.nii.gz")
        for side in ("left", "right"):
            name = f"example_ct_kidney_{side}.nii.gz"
            (tmp / name).symlink_to(args.ct_dir.resolve() / name)
        oracle = args.model is None
        model = args.model or str(_random_models(tmp))
        common = ["--model", model, "--device", args.device] + (["--oracle"] if oracle else [])
        common += [] if args.box_growth is None else ["--box-growth", str(args.box_growth)]
        rows = {name: _run(["--worker", "cascade", "--ct", str(ct)] + common)
                for name, ct in (("real CT (3 mm)", small), ("full-size CT", full))}
        alt = None if args.alt_windows == 0 else _run(["--worker", "alternative", "--ct", str(full), "--device",
                                                        args.device, "--alt-windows", str(args.alt_windows)])
    print(f"Machine: {machine(args.device)}")
    growth = "" if args.box_growth is None else f", box growth {args.box_growth}"
    mirror = rows["full-size CT"].get("stage2_mirror_axes")
    growth += f", stage 2 mirrored along axes {mirror}" if mirror else ""
    print(f"Models: {'random weights of training/configs defaults, oracle boxes' if oracle else model}{growth}\n")
    keys = ["read_s", "stage1_s", "stage2_s", "postprocessing_s", "write_s", "total_s"]
    print("| case | " + " | ".join(keys) + " | peak RSS (MiB) |")
    print("|---" * (len(keys) + 2) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r['timings'][k]:.2f}" for k in keys) + f" | {r['peak_rss_mib']:.0f} |")
    full_total = rows["full-size CT"]["timings"]["total_s"]
    if alt is None:  # --alt-windows 0: no alternative (MONAI need not be installed)
        return
    print(f"\nSingle-stage alternative on the full-size CT: DynUNet {alt['parameters'] / 1e6:.1f} M parameters, "
          f"{alt['windows']} windows of 128^3 x {alt['per_window_s']:.2f} s = {alt['estimated_total_s']:.0f} s "
          f"(estimated from {args.alt_windows} windows; peak RSS {alt['peak_rss_mib']:.0f} MiB)")
    print(f"Cascade speed-up on the full-size CT: {alt['estimated_total_s'] / full_total:.1f}x")


if __name__ == "__main__":
    main()
