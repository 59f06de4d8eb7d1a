"""`kidney-tumor-seg`: segment CT files, DICOM folders or folders of cases from the command line.

Exit codes: 0 every case succeeded; 1 some cases of a batch failed (the others are done) or an unexpected
error; 2 command-line usage error; 3 bad input (unreadable or implausible CT, output exists); 4 the model
cannot be found or loaded; 130 interrupted (Ctrl+C, SIGTERM: outputs are all-or-nothing per file).

``--json-progress`` prints one JSON object per line on stdout, for programs (the Slicer module reads it):
``{"event": "start"|"progress"|"case_done"|"case_failed"|"summary", ...}``.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from .checkpoint import CheckpointError
from .errors import InputError
from .image_io import READ_EXTENSIONS, dicom_series
from .inference import Cancelled
from .models import DEFAULT_MODEL, ModelError
from .pipeline import SegmentOptions, load_cascade, segment_case

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INPUT, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
KITS_IMAGE_NAMES = ("imaging.nii.gz", "imaging.nii", "image.nii.gz", "ct.nii.gz")


def discover_cases(path: Path) -> tuple[List[Path], bool]:
    """(cases, is_batch): a file, a DICOM folder, or a folder of files / DICOM folders / KiTS case folders."""
    if path.is_file():
        return [path], False
    if not path.is_dir():
        raise InputError(f"Input '{path}' does not exist; check the path.")
    if dicom_series(path):
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
            elif dicom_series(child):
                cases.append(child)
    if not cases:
        raise InputError(f"Folder '{path}' holds no CT file (.nii.gz, .nrrd, .mha), DICOM series or "
                         "case folder with imaging.nii.gz; point to a CT file or a folder of them.")
    return cases, True


class Reporter:
    """Progress for people (a bar on stderr) or for programs (JSON lines on stdout)."""

    def __init__(self, json_lines: bool, stream=None):
        self.json_lines, self.stream = json_lines, stream or sys.stderr
        self.case = ""
        self._last = (-1, "")

    def event(self, kind: str, **fields) -> None:
        if self.json_lines:
            print(json.dumps({"event": kind, **fields}, default=str), flush=True)

    def progress(self, fraction: float, text: str) -> None:
        if self.json_lines:
            self.event("progress", case=self.case, fraction=round(fraction, 4), stage=text)
            return
        percent = int(fraction * 100)
        if (percent, text) == self._last:
            return
        self._last = (percent, text)
        bar = "#" * (percent // 4) + "." * (25 - percent // 4)
        end = "\n" if fraction >= 1.0 else ""
        if self.stream.isatty():
            self.stream.write(f"\r{self.case}: [{bar}] {percent:3d}% {text:<40}{end}")
        elif end or text != getattr(self, "_text", None):
            self.stream.write(f"{self.case}: {percent:3d}% {text}\n")
        self._text = text
        self.stream.flush()

    def say(self, text: str) -> None:
        if not self.json_lines:
            print(text, flush=True)


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
    seg.add_argument("--series-uid", help="DICOM SeriesInstanceUID to read (default: the largest series)")
    seg.add_argument("--overwrite", action="store_true", help="replace existing output files")
    seg.add_argument("--json-progress", action="store_true", help="JSON lines on stdout, for programs")
    seg.set_defaults(mode="default")
    return parser


def _sigterm(signum, frame):  # so that finally blocks remove temporary files when Slicer cancels
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    reporter = Reporter(args.json_progress)
    try:
        return _segment(args, reporter)
    except KeyboardInterrupt:
        reporter.event("interrupted")
        print("Interrupted: no partial output file was left behind.", file=sys.stderr)
        return EXIT_INTERRUPTED


def _segment(args, reporter: Reporter) -> int:
    try:
        options = SegmentOptions(args.model, args.device, args.mode, args.qc, args.probabilities,
                                 args.dicom_seg, args.labelmap_format, args.overwrite, args.series_uid)
        cases, batch = discover_cases(args.input.expanduser())
        cascade = load_cascade(options)
    except (ModelError, CheckpointError) as exc:
        return _fail(reporter, str(exc), EXIT_MODEL)
    except InputError as exc:  # DeviceError is an InputError too
        return _fail(reporter, str(exc), EXIT_INPUT)
    reporter.event("start", cases=[str(c) for c in cases], model=options.model, mode=options.mode)
    done, failed = [], []
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
        reporter.event("case_done", case=str(case), outputs={k: str(v) for k, v in result.outputs.items()},
                       volumes_ml=result.volumes_ml, seconds=round(result.seconds, 2), message=result.message,
                       warnings=result.warnings)
        reporter.say(_describe(result))
    reporter.event("summary", succeeded=len(done), failed=len(failed),
                   failures=[{"case": str(c), "message": m} for c, m in failed])
    if batch:
        reporter.say(f"\n{len(done)} of {len(cases)} case(s) segmented, {len(failed)} failed.")
        for case, message in failed:
            reporter.say(f"  FAILED {case}: {message}")
    return EXIT_FAILED if failed else EXIT_OK


def _describe(result) -> str:
    lines = [f"{result.name}: {result.message} ({result.seconds:.1f} s)"]
    lines += [f"  {name}: {ml:.1f} mL" for name, ml in result.volumes_ml.items()]
    lines += [f"  wrote {path}" for path in result.outputs.values()]
    lines += [f"  warning: {w}" for w in result.warnings]
    return "\n".join(lines)


def _fail(reporter: Reporter, message: str, code: int, **fields) -> int:
    reporter.event("error", message=message, exit_code=code, **fields)
    print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
