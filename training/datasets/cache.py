"""Per-stage preprocessing cache: each case's network input built by ``KidneyTumorSegLib.network_input``, the
code the cascade runs at inference, so the cached image is bit for bit what the network gets there.

Stage 1 (kidney localisation): the whole CT, reoriented to the canonical grid (LPS) and resampled to the
coarse spacing (default 4 mm isotropic); labels collapsed to kidney-vs-background (1, 2, 3 -> 1).
Stage 2 (kidney/tumor/cyst): one crop per kidney region. The boxes come from the reference labels
(``network_input.reference_boxes``: kidney components of {1, 2, 3} on the canonical grid at the CT's own
spacing, at most two, >= ``box_min_kidney_mm3``) and follow the config's box rule, as the cascade's boxes from
stage 1 do: grown by ``box_margin_mm`` (default 15 mm), clipped to the image, overlapping boxes merged (a
horseshoe kidney is one crop); then the crop is resampled to the fine spacing (default 1.5 mm).
The crop keeps every label inside the box (e.g. a fragment of the other kidney), as inference would see it.

Labels are resampled with ``label_kind`` "onehot" (default: each class's mask linearly, then argmax; smoother
boundaries and thin structures survive better than with "nearest") or "nearest".

Normalisation ("clip_zscore" with FIXED statistics): the CT is clipped to ``clip_range`` and z-scored with
one mean/std for the whole data set, so the network input does not depend on how much air or bone a
scan's field of view holds. If the config gives mean/std they are used; otherwise they are computed once
over the foreground (labels 1-3) voxels of all given cases (clipped, up to ``STATS_VOXELS_PER_CASE``
voxels each, nnU-Net's CT scheme) and written into the resolved config. The resolved config (a plain
``PreprocessingConfig``) is stored in ``index.json``; the trainer must put exactly it into the checkpoint.
(The statistics include every given case, validation folds too, as nnU-Net does; pass mean/std computed
on a training split in the config to avoid that.)

Cache layout (``cache_dir``):
  * ``<case_id>.npz`` (stage 1) or ``<case_id>_k<i>.npz`` (stage 2 crop i), uncompressed for fast loading:
    ``image`` (z, y, x) float16 (or float32), ``labels`` uint8, ``spacing``/``origin``/``direction``
    (ITK convention, x-y-z), ``case_id``, ``crop``, ``box_start``/``box_stop`` (stage 2: the crop on the
    canonical grid at the CT's spacing), ``locations_<k>`` for each class k present: up to
    ``n_locations`` (z, y, x) voxel coordinates of class k, a seeded random subset (for oversampling);
  * ``index.json``: stage, resolved config, config hash, normalisation statistics and, per case, its
    entries (file, shape, spacing, class voxel counts, per-class bounding boxes [z0, y0, x0, z1, y1, x1)
    (stop exclusive), has_tumor/has_cyst of the whole case).
Re-running skips cases whose entries exist with the same config hash; the index is rewritten after each
case, so an interrupted run resumes.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from KidneyTumorSegLib.atomic import atomic_output, write_text
from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.geometry import Geometry, Image
from KidneyTumorSegLib.image_io import read_image, read_labelmap
from KidneyTumorSegLib.labels import MASSES, Label, has_masses, main_labels
from KidneyTumorSegLib.network_input import KidneyBox, box_around, canonical_ct, reference_boxes, stage_input
from KidneyTumorSegLib.preprocessing import PreprocessingConfig, reorient

from .heldout import check_not_held_out
from .layouts import Case, DatasetError
from .negatives import INTERFACE_CLASS, add_auxiliary, auxiliary_labels, interface_mask, read_anatomy

FORMAT_VERSION = 1
DEFAULT_SPACING = {1: (4.0, 4.0, 4.0), 2: (1.5, 1.5, 1.5)}
STATS_VOXELS_PER_CASE = 20_000
INDEX = "index.json"


def default_config(stage: int, spacing: Optional[Sequence[float]] = None, **kwargs) -> PreprocessingConfig:
    """The stage's PreprocessingConfig: clip [-100, 400] HU + z-score, default spacing per stage."""
    _check_stage(stage)
    return PreprocessingConfig(target_spacing=tuple(spacing) if spacing else DEFAULT_SPACING[stage], **kwargs)


def _check_stage(stage: int) -> None:
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 (whole CT, kidney vs background) or 2 (kidney crops), got {stage!r}.")


# -- reading ----------------------------------------------------------------------------------------
def read_case(case: Case) -> Tuple[Image, Image]:
    """(CT in HU, labels in our Label values) of a case, after checking the pair belongs together."""
    check_not_held_out(case.image_path, case_id=case.case_id)
    try:
        ct = read_image(case.image_path)
        src = read_labelmap(case.label_path)
    except InputError as exc:
        raise DatasetError(f"{case.case_id}: {exc}") from exc
    check_not_held_out(case.image_path, ct.geometry, case.case_id)
    a, b = ct.geometry, src.geometry
    if a.size != b.size or not a.is_close(b, atol=1e-3):
        raise DatasetError(
            f"{case.case_id}: image '{case.image_path}' and label map '{case.label_path}' have different "
            f"geometry (size {a.size} vs {b.size}, spacing {_r(a.spacing)} vs {_r(b.spacing)}, origin "
            f"{_r(a.origin)} vs {_r(b.origin)}); the label map must lie on the image's voxel grid.")
    return ct, Image(case.map_labels(src.array), b)


def _r(v) -> tuple:
    return tuple(round(float(x), 4) for x in v)


def foreground_stats(cases: Sequence[Case], clip_range=(-100.0, 400.0), voxels_per_case: int = STATS_VOXELS_PER_CASE,
                     seed: int = 0) -> Tuple[float, float]:
    """Mean and std of clipped HU over the foreground (labels 1-3) of ``cases`` (seeded subsample per case)."""
    samples = []
    for case in cases:
        ct, labels = read_case(case)
        values = ct.array[labels.array > 0]
        if values.size > voxels_per_case:
            rng = np.random.default_rng([seed, zlib.crc32(case.case_id.encode())])
            values = rng.choice(values, voxels_per_case, replace=False)
        samples.append(np.clip(values.astype(np.float64), *clip_range))
    if not samples or sum(s.size for s in samples) < 2:
        raise DatasetError("No foreground voxels to compute normalisation statistics from; give mean/std "
                           "in the PreprocessingConfig.")
    pooled = np.concatenate(samples)
    return float(pooled.mean()), float(max(pooled.std(), 1e-3))


# -- per-case processing ----------------------------------------------------------------------------
def stage1_target(labels: np.ndarray, stage_labels: Optional[Sequence[str]] = None) -> np.ndarray:
    """Stage 1's target from KiTS labels: every kidney label as "kidney", or, when the stage's labels also name
    "masses", the parenchyma as "kidney" and tumor + cyst as "masses" (their own class, so that the loss can
    weight them: a stage 1 that takes a large tumor for spleen or bowel boxes only the kidney beside it)."""
    main = main_labels(stage_labels or ("background", "kidney"))  # names as stage_config.check_labels allows
    if not has_masses(main):
        return (labels > 0).astype(np.uint8)
    out = np.zeros(labels.shape, np.uint8)
    out[labels == Label.KIDNEY] = main.index("kidney")
    out[(labels == Label.TUMOR) | (labels == Label.CYST)] = main.index(MASSES)
    return out


def inner_box_zyx(box: KidneyBox, canonical: Geometry, geometry: Geometry) -> List[float]:
    """Where ``box`` (voxels of the ``canonical`` grid) lies in a crop resampled to ``geometry`` (the same axes at
    another spacing): [z0, y0, x0, z1, y1, x1) as fractional voxel edges of the crop's array."""
    corners = np.array([[(box.start, box.stop)[b][a] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
    ijk = geometry.physical_to_index(canonical.index_to_physical(corners[:, ::-1] - 0.5)) + 0.5
    return [float(v) for v in np.concatenate([ijk.min(axis=0)[::-1], ijk.max(axis=0)[::-1]])]


def box_slices(inner_zyx, shape) -> tuple:
    """The voxels whose centres lie inside [z0, y0, x0, z1, y1, x1) (fractional voxel edges), clipped to ``shape``
    (the rule's box of a wide crop, as training and validation cut it)."""
    inner = np.asarray(inner_zyx, float)
    lo = np.clip(np.ceil(inner[:3] - 0.5), 0, shape).astype(int)
    hi = np.clip(np.ceil(inner[3:] - 0.5), 0, shape).astype(int)
    return tuple(slice(a, max(a, b)) for a, b in zip(lo, hi))


def process_case(ct: Image, labels: Image, stage: int, config: PreprocessingConfig, label_kind: str = "onehot",
                 stage_labels: Optional[Sequence[str]] = None,
                 anatomy: Optional[Tuple[Image, Dict[str, int]]] = None,
                 crop_margin_mm: Optional[float] = None) -> List[Dict[str, Any]]:
    """The stage's training samples of one case: dicts with image (normalised float32), labels, geometry, box
    (stage 2: ([z, y, x] start, stop) on the canonical grid at the CT's spacing; stage 1: None), and the
    interface mask when ``stage_labels`` has auxiliary classes (then ``anatomy`` = (map, vocabulary)).
    ``crop_margin_mm`` (stage 2, above the config's ``box_margin_mm``): each box of the box rule is cut wider by the
    difference, so that training can move its faces (``training.box_jitter_mm``); ``inner`` then says where the
    rule's box lies in the crop (:func:`inner_box_zyx`)."""
    _check_stage(stage)
    if config.mean is None and config.normalization == "clip_zscore":
        raise ValueError("process_case needs fixed mean/std in the config (see foreground_stats).")
    img, grid, _ = canonical_ct(ct, config)
    lab, _, _ = reorient(labels.array, labels.geometry, config.orientation)
    boxes = [None] if stage == 1 else reference_boxes(lab, grid, config)
    wide = stage == 2 and crop_margin_mm is not None
    extra = float(crop_margin_mm) - config.box_margin_mm if wide else 0.0
    if extra < 0:
        raise ValueError(f"crop_margin_mm {crop_margin_mm} is below the box rule's margin ({config.box_margin_mm} mm).")
    if stage == 1:
        lab = stage1_target(lab, stage_labels)
    aux = auxiliary_labels(stage_labels)
    if aux:
        if anatomy is None or not anatomy[0].geometry.is_close(labels.geometry, atol=1e-3):
            raise DatasetError("Auxiliary classes need the case's anatomy map on the label map's grid.")
        # A map of the auxiliary classes alone, resampled apart: the kidney's targets stay exactly those of a
        # cache without negatives (one-hot resampling with more classes would move its boundary voxels).
        aux_lab = add_auxiliary(np.zeros_like(lab), reorient(anatomy[0].array, anatomy[0].geometry,
                                                             config.orientation)[0], anatomy[1], stage_labels)
        aux_lab[lab > 0] = 0
    out = []
    for box in boxes:
        # The rule's box grown by the extra margin (whole voxels, clipped), as the box rule itself grows a kidney.
        crop = box_around([slice(a, b) for a, b in zip(box.start, box.stop)], grid, grid, extra, box.sides) \
            if extra > 0 else box
        x = stage_input(img, grid, config, crop)
        y = x.grid.cut(lab, label_kind).astype(np.uint8)
        if aux:
            y = np.where(y > 0, y, x.grid.cut(aux_lab, label_kind)).astype(np.uint8)
        out.append({"image": x.image, "labels": y, "geometry": x.geometry,
                    "box": None if crop is None else (crop.start, crop.stop),
                    "inner": inner_box_zyx(box, grid, x.geometry) if wide else None,
                    "interface": interface_mask(y, stage_labels, x.geometry.spacing[::-1]) if aux else None})
    return out


def _summary(labels: np.ndarray, rng: np.random.Generator, n_locations: int, interface=None):
    counts = np.bincount(labels.ravel(), minlength=len(Label))
    bboxes, locations = {}, {}
    for k in range(1, len(counts)):
        if counts[k] == 0:
            continue
        idx = np.argwhere(labels == k)
        bboxes[str(k)] = [int(v) for v in idx.min(0)] + [int(v) + 1 for v in idx.max(0)]
        if len(idx) > n_locations:
            idx = idx[np.sort(rng.choice(len(idx), n_locations, replace=False))]
        locations[k] = idx.astype(np.int32)
    if interface is not None and interface.any():  # stored under a key no class uses
        idx = np.argwhere(interface)
        if len(idx) > n_locations:
            idx = idx[np.sort(rng.choice(len(idx), n_locations, replace=False))]
        locations[INTERFACE_CLASS] = idx.astype(np.int32)
    return {str(k): int(c) for k, c in enumerate(counts)}, bboxes, locations


# -- the dataset ------------------------------------------------------------------------------------
def config_hash(stage: int, config: PreprocessingConfig, **settings) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, "stage": stage, "config": config.to_dict(), **settings},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_index(cache_dir) -> Dict[str, Any]:
    path = Path(cache_dir) / INDEX
    if not path.is_file():
        raise DatasetError(f"'{cache_dir}' holds no {INDEX}; run python -m training.datasets.preprocess first.")
    return json.loads(path.read_text(encoding="utf-8"))


def index_entries(index: Dict[str, Any]) -> List[Dict[str, Any]]:
    """All entries (one per npz file) of an index, in case order."""
    return [e for cid in sorted(index["cases"]) for e in index["cases"][cid]["entries"]]


def load_entry(cache_dir, entry: Dict[str, Any]) -> Dict[str, Any]:
    """The arrays of one cache entry: image, labels, spacing, locations {k: (N, 3)}, ..."""
    with np.load(Path(cache_dir) / entry["file"]) as z:
        data = {k: z[k] for k in z.files}
    data["locations"] = {int(k.split("_")[1]): data.pop(k) for k in list(data) if k.startswith("locations_")}
    return data


def _resolve_config(cases, stage, config, index_old, stats_seed) -> Tuple[PreprocessingConfig, Dict[str, Any]]:
    if config.normalization != "clip_zscore" or config.mean is not None:
        return config, {"source": "config"}
    ids = sorted(c.case_id for c in cases)
    ids_hash = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    old = (index_old or {}).get("normalization", {})
    if old.get("cases_hash") == ids_hash and old.get("clip_range") == list(config.clip_range):
        mean, std = old["mean"], old["std"]  # same cases: reuse, so re-runs stay idempotent and cheap
    else:
        mean, std = foreground_stats(cases, config.clip_range, seed=stats_seed)
    resolved = PreprocessingConfig.from_dict({**config.to_dict(), "mean": mean, "std": std})
    return resolved, {"source": f"foreground of {len(ids)} cases", "cases_hash": ids_hash,
                      "clip_range": list(config.clip_range), "mean": mean, "std": std}


def _write_sample(cache: Path, case_id: str, stage: int, i: int, s: Dict[str, Any], dtype: str,
                  rng: np.random.Generator, n_locations: int) -> Dict[str, Any]:
    """Write one sample of ``process_case`` as an .npz; returns its index entry."""
    name = f"{case_id}.npz" if stage == 1 else f"{case_id}_k{i}.npz"
    counts, bboxes, locations = _summary(s["labels"], rng, n_locations, s["interface"])
    g: Geometry = s["geometry"]
    arrays = {"image": s["image"].astype(dtype), "labels": s["labels"], "spacing": np.array(g.spacing),
              "origin": np.array(g.origin), "direction": np.array(g.direction),
              "case_id": np.array(case_id), "crop": np.array(i)}
    if s["box"] is not None:
        arrays["box_start"], arrays["box_stop"] = np.array(s["box"][0]), np.array(s["box"][1])
    if s.get("inner") is not None:
        arrays["inner_zyx"] = np.array(s["inner"])
    arrays.update({f"locations_{k}": v for k, v in locations.items()})
    with atomic_output(cache / name, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)  # a file object: savez adds no second ".npz"
    return {"file": name, "case_id": case_id, "crop": i, "shape": list(s["labels"].shape),
            "spacing": list(g.spacing), "class_voxels": counts, "bboxes": bboxes,
            "interface_voxels": int(s["interface"].sum()) if s["interface"] is not None else 0,
            "box": None if s["box"] is None else [list(s["box"][0]), list(s["box"][1])],
            **({"inner_zyx": s["inner"]} if s.get("inner") is not None else {})}


def preprocess_dataset(cases: Sequence[Case], stage: int, config: Optional[PreprocessingConfig], cache_dir,
                       label_kind: str = "onehot", dtype: str = "float16", n_locations: int = 1000, stats_seed: int = 0,
                       log: Optional[Callable[[str], None]] = None,
                       stage_labels: Optional[Sequence[str]] = None,
                       crop_margin_mm: Optional[float] = None) -> Dict[str, Any]:
    """Cache ``cases`` for ``stage`` in ``cache_dir`` (see the module docstring); returns the index.
    ``stage_labels`` with auxiliary ("aux_") names adds those classes from each case's anatomy map;
    ``crop_margin_mm``: stage-2 crops cut wider than the box rule (see :func:`process_case`)."""
    _check_stage(stage)
    if label_kind not in ("onehot", "nearest"):
        raise ValueError(f"label_kind must be 'onehot' or 'nearest', got {label_kind!r}.")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}.")
    if len({c.case_id for c in cases}) != len(cases):
        raise DatasetError("Duplicate case ids in the case list; every case needs a unique id.")
    say = log or (lambda s: None)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    old = json.loads((cache / INDEX).read_text(encoding="utf-8")) if (cache / INDEX).is_file() else None
    if old is not None and old.get("stage") != stage:
        raise DatasetError(f"'{cache}' already holds a stage-{old.get('stage')} cache; use another folder for "
                           f"stage {stage}.")
    config = config or default_config(stage)
    resolved, norm = _resolve_config(cases, stage, config, old, stats_seed)
    settings = dict(label_kind=label_kind, dtype=dtype)  # the box rule is in the config (its hash too)
    aux = auxiliary_labels(stage_labels)
    if aux or has_masses(stage_labels or ()):  # the target's classes are part of what a cache is
        settings["labels"] = list(stage_labels)
    if crop_margin_mm is not None:
        if stage != 2 or crop_margin_mm < config.box_margin_mm:
            raise ValueError(f"crop_margin_mm {crop_margin_mm}: stage-2 crops only, at least the box rule's margin "
                             f"({config.box_margin_mm} mm).")
        settings["crop_margin_mm"] = float(crop_margin_mm)  # the box rule (and best.pt) keep box_margin_mm
    h = config_hash(stage, resolved, **settings)
    index = {"format": FORMAT_VERSION, "stage": stage, "config": resolved.to_dict(), "config_hash": h,
             "normalization": norm, **settings, "cases": {}}
    for cid, rec in (old or {}).get("cases", {}).items():
        if rec.get("config_hash") == h and all((cache / e["file"]).is_file() for e in rec["entries"]):
            index["cases"][cid] = rec  # still valid (also cases not in this run's list)
        else:  # stale: written under another config
            for e in rec.get("entries", []):
                (cache / e["file"]).unlink(missing_ok=True)
    for n, case in enumerate(cases):
        if case.case_id in index["cases"]:
            say(f"[{n + 1}/{len(cases)}] {case.case_id}: cached")
            continue
        ct, labels = read_case(case)
        samples = process_case(ct, labels, stage, resolved, label_kind, stage_labels,
                               read_anatomy(case.image_path) if aux else None, settings.get("crop_margin_mm"))
        present = set(np.unique(labels.array).tolist())
        if stage == 2 and not samples:
            say(f"[{n + 1}/{len(cases)}] {case.case_id}: no kidney component >= {resolved.box_min_kidney_mm3} mm^3, "
                "no crop")
        rng = np.random.default_rng([stats_seed, zlib.crc32(case.case_id.encode())])
        entries = [_write_sample(cache, case.case_id, stage, i, s, dtype, rng, n_locations)
                   for i, s in enumerate(samples)]
        index["cases"][case.case_id] = {"config_hash": h, "source_image": str(case.image_path),
                                        "has_tumor": int(Label.TUMOR) in present,
                                        "has_cyst": int(Label.CYST) in present, "entries": entries}
        write_text(cache / INDEX, json.dumps(index, indent=1))
        say(f"[{n + 1}/{len(cases)}] {case.case_id}: {len(entries)} sample(s)")
    write_text(cache / INDEX, json.dumps(index, indent=1))
    return index
