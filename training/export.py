"""Publish two trained checkpoints as a release model: ``OUTDIR/NAME/{stage1,stage2}.pt`` + a registry entry.

    python -m training.export --stage1 RUN1/best.pt --stage2 RUN2/best.pt [RUN3/best.pt ...] --name NAME -o OUTDIR
        [--metrics EVAL/metrics.csv | metrics.json] [--data-provenance TEXT] [--description TEXT]
        [--license kits|kits+flare22|TEXT] [--url-base URL] [--registry Resources/Models/models.json [--default]]
        [--overwrite]

The release files are re-saved with ``save_checkpoint`` (config, labels, preprocessing and patch size from
the training checkpoint; data provenance, source file hashes and the cascade's validation metrics added),
then loaded back with ``load_checkpoint``, compared with the source weights and chained into a ``Cascade``
before anything is published. Several ``--stage2`` files (trainings of one network on one input) become one
ensemble file whose probabilities are their average (``networks.Ensemble``). Everything is built in a hidden staging folder that is renamed to
``OUTDIR/NAME`` at the end, so a crash never leaves a half-written model folder.

Registry file (``Resources/Models/models.json``; ``file`` paths are relative to the registry's folder)::

    {"schema_version": 1,
     "models": {"NAME": {
        "description": "...",
        "stage1": {"file": "NAME/stage1.pt", "sha256": "...", "size_bytes": 123, "spacing_mm": [x, y, z],
                   "patch_size": [z, y, x], "labels": [...], "network": "residual_unet",
                   "parameters": 123, "url": "optional, for downloads"},
        "stage2": {...same keys...},
        "metrics": {"source": "...", "n_cases": 20, "mean": {"kidney": {"dice": 0.95, ...}, ...}},
        "training_data": "KiTS23 training set, 5-fold CV fold 0 ...",
        "license": "CC BY-NC-SA 4.0 ...", "code_license": "Apache-2.0",
        "created_utc": "...", "checkpoint_format_version": 1}}}

``license`` is the weights' license, which follows their training data (KiTS: CC BY-NC-SA 4.0; FLARE22 label
maps: non-commercial research only); ``code_license`` is the license of the KidneyTumorSeg code that runs
them (the repository's LICENSE), the same for every model.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch

from KidneyTumorSegLib.atomic import atomic_folder, write_text
from KidneyTumorSegLib.cascade import Cascade, Stage
from KidneyTumorSegLib.checkpoint import (Checkpoint, CheckpointError, ensemble_of, format_version_of, load_checkpoint,
                                          save_checkpoint)
from KidneyTumorSegLib.lesion_density import cyst_hu_range
from KidneyTumorSegLib.mirroring import mirror_axes_tuple
from KidneyTumorSegLib.models import DEFAULT_MODEL
from KidneyTumorSegLib.networks import Ensemble, count_parameters

from .download import sha256_file

SCHEMA_VERSION = 1
STAGE_FILES = {"stage1": "stage1.pt", "stage2": "stage2.pt"}
ENTRY_FILE = "models_entry.json"
CODE_LICENSE = "Apache-2.0"  # the code (LICENSE at the top of the repository), not the weights
# A model's own license follows its training data (see training/README.md, "License"):
KITS_LICENSE = ("CC BY-NC-SA 4.0 (weights trained on KiTS data, which is CC BY-NC-SA 4.0; non-commercial use, "
                "share alike)")
KITS_FLARE22_LICENSE = ("CC BY-NC-SA 4.0, non-commercial research use only (weights trained on KiTS data, which is "
                        "CC BY-NC-SA 4.0, and on CTs painted from FLARE22 label maps, whose challenge terms allow "
                        "research use only; share alike)")
LICENSES = {"kits": KITS_LICENSE, "kits+flare22": KITS_FLARE22_LICENSE}  # names --license accepts
DEFAULT_LICENSE = KITS_LICENSE
SUMMARY_METRICS = ("dice", "surface_dice", "hd95_mm", "asd_mm", "precision", "recall")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PathLike = Union[str, os.PathLike]


class ExportError(ValueError):
    """An export that cannot be done; the message says what to fix."""


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf become None (strict JSON has no NaN), tuples become lists."""
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def summarize_metrics_csv(path: PathLike) -> Dict[str, Any]:
    """Mean of each metric per region over the cases of ``training.evaluate``'s metrics.csv (NaN left out)."""
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "region" not in rows[0] or "dice" not in rows[0]:
        raise ExportError(f"{path} is not a metrics.csv written by training.evaluate (no region/dice columns).")
    per_region: Dict[str, Dict[str, list]] = {}
    for row in rows:
        region = per_region.setdefault(row["region"], {m: [] for m in SUMMARY_METRICS})
        for m in SUMMARY_METRICS:
            try:
                value = float(row.get(m, "nan"))
            except ValueError:
                continue
            if not math.isnan(value):
                region[m].append(value)
    mean = {r: {m: round(sum(v) / len(v), 4) if v else None for m, v in ms.items()} for r, ms in per_region.items()}
    cases = sorted({row["case"] for row in rows})
    return {"source": f"training.evaluate {path.name}", "n_cases": len(cases), "mean": mean}


def load_metrics(path: Optional[PathLike]) -> Dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"Metrics file {p} does not exist; pass the metrics.csv of training.evaluate.")
    if p.suffix.lower() == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ExportError(f"{p} must hold a JSON object.")
        return _clean(data)
    return summarize_metrics_csv(p)


def _load(path: PathLike, stage: str) -> Checkpoint:
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        raise ExportError(f"--{stage}: {exc}") from exc


def _load_stage2(paths: Sequence[PathLike], hashes: Sequence[str]) -> Checkpoint:
    """One stage-2 checkpoint, or the ensemble of several (their probabilities averaged); ``hashes``: the
    files' SHA-256, in order."""
    twice = [str(p) for p, h in zip(paths, hashes) if hashes.count(h) > 1]
    if twice:
        raise ExportError(f"--stage2: {', '.join(twice)} hold the same network; an ensemble needs different "
                          "trainings.")
    ckpts = [_load(p, "stage2") for p in paths]
    if len(ckpts) == 1:
        return ckpts[0]
    try:
        return ensemble_of(ckpts)
    except ValueError as exc:
        raise ExportError(f"--stage2: {exc}") from exc


def _check_pair(c1: Checkpoint, c2: Checkpoint) -> None:
    """The two files must chain as a cascade (the same check the inference code does, done before publishing)."""
    if "kidney" not in [l.lower() for l in c1.labels]:
        raise ExportError(f"--stage1 predicts {c1.labels}: a stage-1 model must predict 'kidney'. Were the "
                          "stages swapped?")
    try:
        Cascade(Stage.from_checkpoint(c1), Stage.from_checkpoint(c2), device="cpu")
    except ValueError as exc:
        raise ExportError(f"The two checkpoints do not form a cascade: {exc}") from exc


def _stage_entry(ckpt: Checkpoint, path: Path, rel_file: str, url_base: Optional[str]) -> Dict[str, Any]:
    sp = ckpt.preprocessing.target_spacing
    entry = {"file": rel_file, "sha256": sha256_file(path), "size_bytes": path.stat().st_size,
             "spacing_mm": list(sp) if sp is not None else None, "patch_size": list(ckpt.patch_size),
             "labels": list(ckpt.labels), "network": ckpt.network_name,
             "parameters": int(count_parameters(ckpt.model))}
    if isinstance(ckpt.model, Ensemble):  # parameters counts every member's
        entry["members"] = len(ckpt.model.members)
    if url_base:
        entry["url"] = f"{url_base.rstrip('/')}/{rel_file}"
    return entry


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def _release_file(ckpt: Checkpoint, stage: str, sources: Sequence[Path], hashes: Sequence[str], name: str,
                  staging: Path, metrics: Mapping[str, Any], data_provenance: Optional[str],
                  url_base: Optional[str]) -> Dict[str, Any]:
    """Re-save one stage as ``staging/stage*.pt`` with the release's provenance (``hashes``: the sources'
    SHA-256), check that it loads back exactly, and return its registry entry."""
    prov = dict(ckpt.provenance)
    # created_utc of the release is set by save_checkpoint; the training time is kept as trained_utc.
    if "created_utc" in prov:
        prov["trained_utc"] = prov.pop("created_utc")
    if len(sources) == 1:
        prov.update({"source_file": sources[0].name, "source_sha256": hashes[0]})
    else:  # an ensemble: one source per member, in member order (run folder and file, no local path)
        prov.update({"source_files": [f"{p.parent.name}/{p.name}" for p in sources],
                     "source_sha256s": list(hashes)})
    prov.update({"release_name": name, "release_stage": stage})
    if data_provenance:
        prov["training_data"] = data_provenance
    ckpt_metrics = dict(ckpt.metrics)
    if metrics:
        ckpt_metrics["cascade_validation"] = metrics
    out = staging / STAGE_FILES[stage]
    save_checkpoint(out, ckpt.network_name, ckpt.config, ckpt.model, ckpt.labels, ckpt.preprocessing,
                    ckpt.patch_size, provenance=prov, metrics=ckpt_metrics)
    check = load_checkpoint(out)  # what users will load; must round-trip exactly
    if not _same_weights(check.model, ckpt.model) or check.labels != ckpt.labels or \
            check.preprocessing != ckpt.preprocessing or check.patch_size != ckpt.patch_size:
        raise ExportError(f"Release file for {stage} did not round-trip through load_checkpoint.")
    return _stage_entry(check, out, f"{name}/{STAGE_FILES[stage]}", url_base)


def export_model(stage1: PathLike, stage2: Union[PathLike, Sequence[PathLike]], name: str, outdir: PathLike,
                 metrics: Optional[Mapping[str, Any]] = None, data_provenance: Optional[str] = None,
                 description: Optional[str] = None, license: str = DEFAULT_LICENSE,
                 url_base: Optional[str] = None, overwrite: bool = False,
                 min_confidence: Optional[float] = None,
                 stage2_mirror_axes: Optional[Sequence[int]] = None,
                 cyst_hu: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """Write ``outdir/name/{stage1.pt,stage2.pt,models_entry.json}``; returns ``{name: entry}``. ``stage2``: one
    checkpoint, or several that become one ensemble file. ``stage2_mirror_axes``: the canonical axes whose
    mirror images stage 2 should also run on by default (CascadeConfig.stage2_mirror_axes). ``cyst_hu``: the
    HU range whose tumors become cysts by default (CascadeConfig.cyst_hu)."""
    if cyst_hu is not None:
        try:
            cyst_hu = cyst_hu_range(cyst_hu, "--cyst-hu")
        except ValueError as exc:
            raise ExportError(f"{exc}.") from exc
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise ExportError(f"--min-confidence {min_confidence}: a lesion confidence is between 0 and 1.")
    try:
        mirror = mirror_axes_tuple(stage2_mirror_axes)
    except ValueError as exc:
        raise ExportError(f"--stage2-mirror-axes: {exc}.") from exc
    if not _NAME.match(name or ""):
        raise ExportError(f"Model name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a "
                          "letter or digit (it becomes a folder name and a registry key).")
    outdir = Path(outdir)
    final = outdir / name
    if final.exists() and not overwrite:
        raise ExportError(f"{final} already exists; pass --overwrite to replace it or choose another --name.")
    many = not isinstance(stage2, (str, os.PathLike))
    sources = {"stage1": [Path(stage1)], "stage2": [Path(p) for p in stage2] if many else [Path(stage2)]}
    stage1_ckpt = _load(stage1, "stage1")  # first: its errors name --stage1
    hashes = {stage: [sha256_file(p) for p in paths] for stage, paths in sources.items()}  # each file read once
    ckpts = {"stage1": stage1_ckpt, "stage2": _load_stage2(sources["stage2"], hashes["stage2"])}
    _check_pair(ckpts["stage1"], ckpts["stage2"])
    metrics = _clean(dict(metrics or {}))
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    outdir.mkdir(parents=True, exist_ok=True)
    with atomic_folder(final) as staging:  # built hidden beside OUTDIR/NAME, renamed into place at the end
        stage_entries = {stage: _release_file(ckpt, stage, sources[stage], hashes[stage], name, staging, metrics,
                                              data_provenance, url_base) for stage, ckpt in ckpts.items()}
        if description is None:
            description = (f"Two-stage kidney/tumor/cyst cascade: {ckpts['stage1'].network_name} (kidney, "
                           f"{_mm(ckpts['stage1'])}) then {_networks(ckpts['stage2'])} (kidney/tumor/cyst, "
                           f"{_mm(ckpts['stage2'])}).")
        entry = {"description": description, **stage_entries, "metrics": metrics,
                 "training_data": data_provenance, "license": LICENSES.get(license, license),
                 "code_license": CODE_LICENSE, "created_utc": now,
                 "checkpoint_format_version": max(format_version_of(c.model) for c in ckpts.values())}
        if min_confidence is not None:  # benchmarks/confidence_threshold.py's choice (segment --min-confidence)
            entry["min_confidence"] = min_confidence
        if mirror:  # what the figures were measured with (models.recommended_stage2_mirror_axes)
            entry["stage2_mirror_axes"] = list(mirror)
        if cyst_hu is not None:  # models.recommended_cyst_hu
            entry["cyst_hu"] = list(cyst_hu)
        _write_json(staging / ENTRY_FILE, {name: entry})
    return {name: entry}


def _networks(ckpt: Checkpoint) -> str:
    model = ckpt.model
    n = len(model.members) if isinstance(model, Ensemble) else 1
    return ckpt.network_name if n == 1 else f"an ensemble of {n} {ckpt.network_name} networks"


def _mm(ckpt: Checkpoint) -> str:
    sp = ckpt.preprocessing.target_spacing
    return "native spacing" if sp is None else "x".join(f"{v:g}" for v in sp) + " mm"


def _write_json(path: Path, data: Any) -> None:
    # fsync: the registry and the model entry are release files, meant to survive a power cut.
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n", fsync=True)


def merge_into_registry(registry: PathLike, entries: Mapping[str, Any], replace: bool = False,
                        files_root: Optional[PathLike] = None, make_default: bool = False) -> Path:
    """Add ``{name: entry}`` to a models.json (created when missing), keeping every other model; atomic.

    ``files_root``: the folder the entries' ``file`` paths are relative to (the export's OUTDIR); when it is
    not the registry's folder the paths are rewritten relative to the registry, as the CLI resolves them.
    ``make_default``: the registry's "default" names this (single) entry: the model used when none is chosen.
    """
    registry = Path(registry)
    if registry.exists():
        try:
            data = json.loads(registry.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ExportError(f"{registry} is not valid JSON ({exc}); fix or remove it first.") from exc
        if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
            raise ExportError(f"{registry} is not a model registry ({{'schema_version', 'models'}}).")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise ExportError(f"{registry} has schema_version {version}, newer than this exporter "
                              f"({SCHEMA_VERSION}); update KidneyTumorSeg.")
    else:
        data = {}
    models = dict(data.get("models", {}))
    clash = sorted(set(entries) & set(models))
    if clash and not replace:
        raise ExportError(f"{registry} already has model(s) {clash}; pass replace=True (--overwrite) to "
                          "replace them.")
    for name, entry in entries.items():
        entry = json.loads(json.dumps(entry))  # deep copy; the caller's dict stays as it was
        if files_root is not None:
            for stage in STAGE_FILES:
                target = Path(files_root) / entry[stage]["file"]
                entry[stage]["file"] = Path(os.path.relpath(target, registry.parent)).as_posix()
        models[name] = entry
    if make_default:
        if len(entries) != 1:
            raise ExportError("make_default needs exactly one model entry.")
        data = {**data, DEFAULT_MODEL: next(iter(entries))}
    registry.parent.mkdir(parents=True, exist_ok=True)
    _write_json(registry, {**data, "schema_version": SCHEMA_VERSION, "models": models})
    return registry


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n")[0])
    p.add_argument("--stage1", required=True, help="stage-1 checkpoint (RUN1/best.pt)")
    p.add_argument("--stage2", required=True, nargs="+", help="stage-2 checkpoint (RUN2/best.pt); several: one "
                   "ensemble that averages their probabilities (trainings of one network on one input)")
    p.add_argument("--name", required=True, help="model name (folder name and registry key)")
    p.add_argument("-o", "--output", required=True, help="folder that receives NAME/")
    p.add_argument("--metrics", help="metrics.csv of training.evaluate (cascade on the validation fold) or JSON")
    p.add_argument("--data-provenance", help="what the model was trained on (data set, version, cases, fold)")
    p.add_argument("--description", help="one line for the registry (default: built from the networks)")
    p.add_argument("--license", default="kits", help="license of the weights, as their training data requires: "
                   "'kits' (KiTS only), 'kits+flare22' (also painted from FLARE22 label maps: non-commercial "
                   "research only) or a text (default: %(default)s); the code's license is recorded as "
                   f"code_license ({CODE_LICENSE})")
    p.add_argument("--url-base", help="where NAME/stage*.pt will be downloadable from (adds 'url' per stage)")
    p.add_argument("--min-confidence", type=float, metavar="T", help="the lesion confidence threshold "
                   "benchmarks/confidence_threshold.py chose for this model (what segment --min-confidence uses)")
    p.add_argument("--stage2-mirror-axes", type=int, nargs="+", metavar="AXIS", help="canonical axes (0 1 2 = "
                   "z y x) whose mirror images stage 2 also runs on by default, its logits averaged (test-time "
                   "augmentation; the networks must have been trained with those flips)")
    p.add_argument("--cyst-hu", type=float, nargs=2, metavar=("LOW", "HIGH"), help="tumors of median HU in this "
                   "range become cysts by default (KidneyTumorSegLib/lesion_density.py; Bosniak's simple fluid: -9 20)")
    p.add_argument("--registry", help="also merge the entry into this models.json")
    p.add_argument("--default", action="store_true", help="with --registry: make NAME the registry's default model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing NAME folder / registry entry")
    args = p.parse_args(argv)
    if args.default and not args.registry:
        p.error("--default needs --registry")
    try:
        entries = export_model(args.stage1, args.stage2, args.name, args.output, load_metrics(args.metrics),
                               args.data_provenance, args.description, args.license, args.url_base,
                               args.overwrite, args.min_confidence, args.stage2_mirror_axes, args.cyst_hu)
        if args.registry:
            merge_into_registry(args.registry, entries, replace=args.overwrite, files_root=args.output,
                                make_default=args.default)
    except (ExportError, OSError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(entries, indent=2))
    folder = Path(args.output) / args.name
    print(f"\nwrote {folder / 'stage1.pt'}, {folder / 'stage2.pt'} and {folder / ENTRY_FILE}", file=sys.stderr)
    if args.registry:
        print(f"registered {args.name!r} in {args.registry}", file=sys.stderr)
    else:
        print("to install: copy the folder into Resources/Models/ and merge the entry into "
              "Resources/Models/models.json (or rerun with --registry).", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
