"""`kidney-tumor-seg`: segment CT files, DICOM folders or folders of cases, and measure label maps.

``segment`` writes label maps (with ``--measure`` also measurements and an HTML report); ``measure`` writes
NAME_measurements.csv, NAME_measurements.json and NAME_report.html for an existing KiTS label map (0-3);
``demo`` segments the bundled sample CT with the default models (``segment SAMPLE --qc --measure``).

Exit codes: 0 every case succeeded; 1 some cases of a batch failed (the others are done) or an unexpected
error; 2 command-line usage error; 3 bad input or output (unreadable or implausible CT, output exists or
cannot be written: folder not writable, disk full, name too long; for measure a label map with values
outside 0-3 or a CT on another grid); 4 the model cannot be found, loaded or verified; 5 every case done,
but an optional output its input cannot support was skipped (a DICOM SEG of a series without
FrameOfReferenceUID; a warning line says why); 130 interrupted by Ctrl+C, 143 by SIGTERM. A case's outputs
appear all together or not at all.

``--json-progress`` prints one JSON object per line on stdout, for programs (the Slicer module reads it):
``{"event": "start"|"warning"|"progress"|"case_done"|"case_failed"|"summary"|"error"|"interrupted", ...}``
(``error``: a run that stops on a failure, with ``message`` and ``exit_code``; ``interrupted`` carries ``exit_code`` and
``written``: every file finished complete before the stop, in that order; a signal during the libraries' import,
before the command line is read, prints only the line); a skipped output is a
``warning`` event with ``kind: "output_skipped"``, ``case``, ``output`` and ``message``, and is listed again
in ``case_done`` (``skipped``) and ``summary`` (``skipped``).
"""
from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .atomic import OutputSet, check_outputs_free, prepare_folder, prepare_outputs, remove_empty_folders
from .checkpoint import CheckpointError
from .entry import (exit_code, install_signal_handlers, interrupted_message, restore_signal_handlers,
                    stop_when_stdin_closes, written_so_far)
from .dicom_io import has_dicom_images, holds_dicom, study_uids
from .errors import InputError
from .image_io import READ_EXTENSIONS, read_image, read_labelmap
from .inference import Cancelled
from .models import DEFAULT_MODEL, ModelError, recommended_min_confidence
from .postprocessing import body_midline_x
from .pipeline import (SegmentOptions, case_name, load_cascade, measurement_paths, mesh_paths, segment_case,
                       write_measurement_outputs)
from .reporter import Reporter
from .result_text import describe_measurements, describe_result, measurement_summary
from .sample import SAMPLE_NOTE, sample_ct_path
from .confidence import split_uncertain
from .segments import segments_from_labels
from .surfaces import write_segment_surfaces

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INPUT, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_TERMINATED = 143  # SIGTERM (128 + 15), e.g. the Slicer module's Cancel
EXIT_SKIPPED = 5  # done, but an optional output the input cannot support was skipped (a warning says why)
KITS_IMAGE_NAMES = ("imaging.nii.gz", "imaging.nii", "image.nii.gz", "ct.nii.gz")
KITS_LABEL_STEMS = {"segmentation"}  # KiTS case_X/segmentation.nii.gz: name the outputs after the folder
GRID_ATOL = 1e-3  # mm (and direction cosines): a CT and a label map of one scan agree far closer


def discover_cases(path: Path) -> tuple[List[Path], bool]:
    """(cases, is_batch): a file; a DICOM folder (DICOM images or a DICOMDIR in it, or one study spread over its
    subfolders: a series per folder, or a series split across them); or a folder of files, DICOM folders
    (DICOM anywhere below) and KiTS case folders: a batch."""
    if path.is_file():
        return [path], False
    if not path.is_dir():
        raise InputError(f"Input '{path}' does not exist; check the path.")
    if has_dicom_images(path):
        return [path], False
    cases = []
    for child in sorted(path.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_file() and child.name.lower().endswith(READ_EXTENSIONS):
            cases.append(child)
        elif child.is_dir():
            image = next((child / n for n in KITS_IMAGE_NAMES if (child / n).is_file()), None)
            if image is not None:
                cases.append(image)
            elif holds_dicom(child):
                cases.append(child)
    if not cases:
        raise InputError(f"Folder '{path}' holds no CT file (.nii.gz, .nrrd, .mha), DICOM series or "
                         "case folder with imaging.nii.gz; point to a CT file or a folder of them.")
    if len(cases) > 1 and all(c.is_dir() for c in cases):
        studies = study_uids(path)  # one (named) study in several folders is one case, not a batch
        if len(studies) == 1 and "" not in studies:
            return [path], False
    return cases, True


RECOMMENDED = -1.0  # --min-confidence without a value: the model's recommended threshold
CYST_BY_DENSITY = {"model": None, "on": True, "off": False}  # --cyst-by-density -> SegmentOptions.cyst_by_density


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie between 0 and 1, got {text}")
    return value


def _planning_arguments(parser) -> None:
    parser.add_argument("--mesh", action="store_true", help="also write one closed, smoothed surface per "
                        "segment (NAME_<segment>.stl, binary STL in LPS mm, as 3D Slicer reads it)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kidney-tumor-seg", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="segment kidneys, tumors and cysts")
    seg.add_argument("input", type=Path, help="CT file, DICOM folder, or folder of cases (batch)")
    seg.add_argument("-o", "--output", type=Path, required=True, help="output folder (created when missing)")
    seg.add_argument("--model", default=DEFAULT_MODEL, help="registered model name or folder with "
                     "stage1.pt and stage2.pt (default: %(default)s)")
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    mode = seg.add_mutually_exclusive_group()
    mode.add_argument("--fast", dest="mode", action="store_const", const="fast",
                      help="less window overlap: faster, slightly less accurate")
    mode.add_argument("--accurate", dest="mode", action="store_const", const="accurate",
                      help="mirroring test-time augmentation: about 8x slower")
    seg.add_argument("--qc", action="store_true", help="also write a QC picture (PNG)")
    seg.add_argument("--probabilities", action="store_true", help="also write probability maps (percent)")
    seg.add_argument("--no-dicom-seg", dest="dicom_seg", action="store_false",
                     help="do not write DICOM SEG for DICOM inputs")
    seg.add_argument("--format", dest="labelmap_format", choices=[".nii.gz", ".nrrd"], default=".nii.gz",
                     help="label map file type (default: %(default)s)")
    seg.add_argument("--series-uid", help="DICOM SeriesInstanceUID to read (default: the axial CT series "
                     "with the most images; the output names the one read)")
    seg.add_argument("--overwrite", action="store_true", help="replace existing output files")
    seg.add_argument("--measure", action="store_true", help="also write measurements (CSV, JSON) and an "
                     "HTML report (volumes, diameters, R.E.N.A.L., PADUA, confidence)")
    _planning_arguments(seg)
    seg.add_argument("--min-confidence", type=_fraction, nargs="?", const=RECOMMENDED, metavar="T",
                     help="lesions whose confidence (mean probability of their class) is below T are listed as "
                     "uncertain and left out of every output (their voxels become background); without T: the "
                     "model's recommended value (Resources/Models/README.md). Default: keep every lesion")
    seg.add_argument("--cyst-by-density", choices=sorted(CYST_BY_DENSITY), default="model",
                     help="tumors of water density (median -9 to 20 HU, 0.5 mL or more) become cysts: 'model' if "
                     "the model recommends it (Resources/Models/README.md), 'on' always, 'off' never (default: "
                     "%(default)s)")
    seg.add_argument("--confidence-map", action="store_true", help="also write NAME_confidence: the model's "
                     "probability of each voxel's label x 255 (uint8)")
    seg.add_argument("--json-progress", action="store_true", help="JSON lines on stdout, for programs")
    seg.add_argument("--stop-when-stdin-closes", action="store_true", help="stop as on SIGTERM (exit 143, no "
                     "partial output) when standard input ends: for a program that keeps a pipe to it open, so that "
                     "the run ends if that program dies")
    seg.set_defaults(mode="default")
    demo = sub.add_parser("demo", help="segment the bundled sample CT with the default models (QC picture, "
                          "measurements, volumes and time printed)")
    demo.add_argument("-o", "--output", type=Path, default=Path("kidney-tumor-seg-demo"),
                      help="output folder (default: %(default)s)")
    demo.add_argument("--model", default=DEFAULT_MODEL, help="registered model name or model folder")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    demo.add_argument("--overwrite", action="store_true", help="replace existing output files")
    demo.add_argument("--json-progress", action="store_true", help="JSON lines on stdout, for programs")
    demo.set_defaults(mode="default", qc=True, measure=True, probabilities=False, dicom_seg=False,
                      labelmap_format=".nii.gz", series_uid=None, mesh=False, min_confidence=None,
                      confidence_map=False, cyst_by_density="model")
    mea = sub.add_parser("measure", help="measure an existing label map (KiTS values 0-3)")
    mea.add_argument("labelmap", type=Path, help="label map: 0 background, 1 kidney, 2 tumor, 3 cyst")
    mea.add_argument("-o", "--output", type=Path, required=True, help="output folder (created when missing)")
    mea.add_argument("--ct", type=Path, help="CT on the label map's grid: the report's pictures, and the body's "
                     "midline for left and right (without it: halfway between the two largest kidney pieces, or "
                     "for one the volume's centre)")
    _planning_arguments(mea)
    mea.add_argument("--confidence", type=Path, help="the label map's confidence map (segment "
                     "--confidence-map): lesions get their confidence")
    mea.add_argument("--min-confidence", type=_fraction, metavar="T", help="with --confidence: lesions below T "
                     "are listed as uncertain, not measured")
    mea.add_argument("--overwrite", action="store_true", help="replace existing output files")
    mea.add_argument("--json-progress", action="store_true", help="JSON lines on stdout, for programs")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line. Ctrl+C and SIGTERM end it with one line and 130 / 143; the console script
    (``entry.main``) installs the same handlers before this module's heavy imports."""
    previous = install_signal_handlers()
    reporter = Reporter(False)
    try:
        args = build_parser().parse_args(argv)
        reporter = Reporter(args.json_progress)
        if getattr(args, "stop_when_stdin_closes", False):
            stop_when_stdin_closes()
        if args.command == "demo":
            try:
                args.input = sample_ct_path()
            except InputError as exc:
                return _fail(reporter, str(exc), EXIT_INPUT)
            rc = _segment(args, reporter)
            if rc == EXIT_OK and not args.json_progress:
                print(SAMPLE_NOTE)
            return rc
        return _measure(args, reporter) if args.command == "measure" else _segment(args, reporter)
    except KeyboardInterrupt as exc:  # entry.Interrupted (SIGINT, SIGTERM) or a plain Ctrl+C
        try:
            written = written_so_far()  # every set renamed into place, even if the stop came after its report
            reporter.event("interrupted", exit_code=exit_code(exc), written=written)
            print(interrupted_message(exc, written), file=sys.stderr, flush=True)
        except OSError:  # the reader is gone (e.g. the program that started the run died): the code still counts
            pass
        return exit_code(exc)
    finally:
        restore_signal_handlers(previous)


def _segment(args, reporter: Reporter) -> int:
    created: List[Path] = []
    try:
        min_confidence = args.min_confidence
        if min_confidence == RECOMMENDED:
            min_confidence = recommended_min_confidence(args.model)
        options = SegmentOptions(args.model, args.device, args.mode, args.qc, args.probabilities,
                                 args.dicom_seg, args.labelmap_format, args.overwrite, args.series_uid,
                                 measure=args.measure, mesh=args.mesh, min_confidence=min_confidence,
                                 confidence_map=args.confidence_map,
                                 cyst_by_density=CYST_BY_DENSITY[args.cyst_by_density],
                                 # without a threshold applied, lesions below the model's own are called uncertain
                                 unsure_below=recommended_min_confidence(args.model) if min_confidence is None
                                 else None)
        cases, batch = discover_cases(args.input.expanduser())
        created = prepare_folder(args.output.expanduser().resolve())  # before any work, as the file checks
        warnings: List[str] = []
        cascade = load_cascade(options, download_progress=lambda done, total: reporter.progress(
            done / total if total else 0.0, "Downloading the model (once)"), warn=warnings.append)
        reporter.event("start", cases=[str(c) for c in cases], model=options.model, mode=options.mode)
        for text in warnings:  # after "start": the first event a program reads
            reporter.warn(text)
        return _segment_cases(args, reporter, options, cascade, cases, batch)
    except (ModelError, CheckpointError) as exc:
        return _fail(reporter, str(exc), EXIT_MODEL)
    except InputError as exc:  # DeviceError and OutputError are InputErrors too
        return _fail(reporter, str(exc), EXIT_INPUT)
    finally:
        remove_empty_folders(created)  # a folder this run made stays only if a case was written into it


def _segment_cases(args, reporter: Reporter, options: SegmentOptions, cascade, cases: List[Path],
                   batch: bool) -> int:
    done, failed, skipped = [], [], []
    for case in cases:
        reporter.case = case.name
        t0 = time.perf_counter()
        try:
            result = segment_case(case, args.output, cascade, options, progress=reporter.progress)
        except (InputError, CheckpointError, Cancelled, MemoryError, RuntimeError, OSError) as exc:
            if not batch:
                code = EXIT_INPUT if isinstance(exc, InputError) else EXIT_FAILED
                return _fail(reporter, str(exc), code, case=str(case))
            failed.append((case, str(exc)))
            reporter.event("case_failed", case=str(case), message=str(exc), seconds=time.perf_counter() - t0)
            print(f"FAILED {case}: {exc}", file=sys.stderr)
            continue
        done.append(result)
        for output, text in result.skipped.items():
            reporter.warn(text, kind="output_skipped", case=str(case), output=output)
            skipped.append({"case": str(case), "output": output, "message": text})
        extra = {} if result.measurements is None else {"measurements": measurement_summary(result.measurements)}
        if result.source is not None:
            extra["dicom_series"] = result.source.to_dict()
        reporter.event("case_done", case=str(case), outputs={k: str(v) for k, v in result.outputs.items()},
                       volumes_ml=result.volumes_ml, seconds=round(result.seconds, 2), message=result.message,
                       warnings=result.warnings, skipped=result.skipped,
                       uncertain_lesions=[u.to_dict(options.min_confidence) for u in result.uncertain],
                       min_confidence=options.min_confidence, unsure_below=options.unsure_below,
                       midline_x=result.midline_x, **extra)
        reporter.say(describe_result(result, options.min_confidence))
    reporter.event("summary", succeeded=len(done), failed=len(failed),
                   failures=[{"case": str(c), "message": m} for c, m in failed], skipped=skipped)
    if batch:
        reporter.say(f"\n{len(done)} of {len(cases)} case(s) segmented, {len(failed)} failed"
                     + (f", {len({s['case'] for s in skipped})} with an optional output skipped." if skipped else "."))
        for case, message in failed:
            reporter.say(f"  FAILED {case}: {message}")
    return EXIT_FAILED if failed else EXIT_SKIPPED if skipped else EXIT_OK


def labelmap_name(path: Path) -> str:
    """NAME of the measurement outputs: as for a CT, and KiTS case_X/segmentation.nii.gz -> case_X."""
    name = case_name(path)
    return path.parent.name if name.lower() in KITS_LABEL_STEMS and path.parent.name else name


def _check_kits_values(labels, path: Path) -> None:
    counts = np.bincount(labels.array.ravel())
    if len(counts) > 4:
        bad = [int(v) for v in np.flatnonzero(counts[4:]) + 4]
        hint = (" A .seg.nrrd numbers its segments per side; pass the NAME.nii.gz label map instead."
                if path.name.lower().endswith(".seg.nrrd") else " Relabel it first.")
        raise InputError(f"Label map '{path}' has values {bad[:8]}{' ...' if len(bad) > 8 else ''} outside "
                         f"0-3; measure needs KiTS labels (0 background, 1 kidney, 2 tumor, 3 cyst).{hint}")


def _grid(g) -> str:
    f = lambda v: "(" + ", ".join(f"{x:g}" for x in np.round(v, 4)) + ")"  # noqa: E731
    return f"size {g.size}, spacing {f(g.spacing)}, origin {f(g.origin)}, direction {f(g.direction)}"


def _same_grid(image_path: Optional[Path], labels, path: Path, why: str, reader=read_image):
    """The image at ``image_path`` (None: None), refused when it is not on the label map's grid."""
    if image_path is None:
        return None
    image = reader(image_path.expanduser())
    if not image.geometry.is_close(labels.geometry, atol=GRID_ATOL):
        raise InputError(f"'{image_path}' and label map '{path}' are on different grids ({image_path.name}: "
                         f"{_grid(image.geometry)}; label map: {_grid(labels.geometry)}). {why}: resample one "
                         "onto the other, or leave it out.")
    return image


def _measure(args, reporter: Reporter) -> int:
    path = args.labelmap.expanduser()
    reporter.case = path.name
    reporter.event("start", cases=[str(path)])
    t0 = time.perf_counter()
    created: List[Path] = []
    try:
        name, outdir = labelmap_name(path), args.output.expanduser().resolve()
        paths = measurement_paths(name, outdir)
        meshes = {f"mesh:{p.name}": p for p in mesh_paths(name, outdir, args)}
        check_outputs_free(list(paths.values()) + list(meshes.values()), args.overwrite)  # before reading
        if args.min_confidence is not None and args.confidence is None:
            raise InputError("--min-confidence needs --confidence MAP (the map segment --confidence-map writes).")
        created = prepare_outputs(list(paths.values()) + list(meshes.values()))
        reporter.progress(0.0, "reading")
        labels = read_labelmap(path, warn=reporter.warn)
        _check_kits_values(labels, path)
        ct = _same_grid(args.ct, labels, path, "The CT feeds the report's pictures and the body's midline",
                        partial(read_image, warn=reporter.warn))
        midline = None if ct is None else body_midline_x(ct.array, ct.geometry)
        conf = _same_grid(args.confidence, labels, path, "The confidence map must be the one made with this label map",
                          partial(read_labelmap, warn=reporter.warn))
        reporter.progress(0.2, "measuring")
        lab, uncertain = labels.array, []
        if args.min_confidence is not None:
            lab, uncertain = split_uncertain(lab, conf.array, labels.geometry, args.min_confidence, midline_x=midline)
        with OutputSet({**paths, **meshes}, args.overwrite, drop_unwritten=meshes) as staged:  # all or none
            m, written = write_measurement_outputs(lab, labels.geometry, staged, ct=ct, overwrite=args.overwrite,
                                                   source=path.name, confidence=None if conf is None else conf.array,
                                                   uncertain=uncertain, min_confidence=args.min_confidence,
                                                   midline_x=midline)
            if args.mesh:
                seg_map, segments = segments_from_labels(lab, labels.geometry, midline_x=midline)
                written.update(write_segment_surfaces(seg_map, segments, labels.geometry,
                                                      staged["measurements_csv"].parent, name, args.overwrite))
        written = {key: outdir / Path(file).name for key, file in written.items()}  # where they are now
        reporter.progress(1.0, "done")
    except (InputError, FileExistsError) as exc:
        return _fail(reporter, str(exc), EXIT_INPUT, case=str(path))
    except (MemoryError, OSError) as exc:
        return _fail(reporter, str(exc), EXIT_FAILED, case=str(path))
    finally:
        remove_empty_folders(created)
    seconds = time.perf_counter() - t0
    reporter.event("case_done", case=str(path), outputs={k: str(v) for k, v in written.items()},
                   measurements=measurement_summary(m), seconds=round(seconds, 2))
    reporter.event("summary", succeeded=1, failed=0, failures=[])
    reporter.say("\n".join([f"{path.name}: measured ({seconds:.1f} s)"] + describe_measurements(m)
                           + [f"  wrote {p}" for p in written.values()]))
    return EXIT_OK


def _fail(reporter: Reporter, message: str, code: int, **fields) -> int:
    reporter.event("error", message=message, exit_code=code, **fields)
    print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
