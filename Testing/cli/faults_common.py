"""Shared by the fault tests (test_faults.py, test_interrupts.py): a folder's exact contents, the one closing
line a failed or stopped run prints, and the command line as a subprocess."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "KidneyTumorSeg"), os.environ.get("PYTHONPATH", "")]))
ALL_OUTPUTS = ("--qc", "--measure", "--probabilities")
SET = ["ct.nii.gz", "ct.seg.nrrd", "ct_measurements.csv", "ct_measurements.json", "ct_prob_cyst.nii.gz",
       "ct_prob_kidney.nii.gz", "ct_prob_tumor.nii.gz", "ct_qc.png", "ct_report.html"]
RAW = ("Traceback", "[nrrd]", "ITK ERROR", "Errno")  # never shown to the user


def contents(folder: Path):
    """{relative path: SHA-256} of every file below ``folder``, hidden ones included; None if it is gone."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} | {
           str(p.relative_to(folder)) + "/": "" for p in folder.rglob("*") if p.is_dir()}


def one_error_line(err: str) -> str:
    """The run's closing message: exactly one line that is not progress output."""
    lines = [l for l in err.splitlines() if l.strip() and "%" not in l and not l.startswith("warning: unverified")]
    assert len(lines) == 1, err
    assert not any(raw in err for raw in RAW), err
    return lines[0]


def _cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "KidneyTumorSegLib", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _signal_after(module, name, signum, monkeypatch):
    """Replace module.name by a wrapper that calls it and then signals this process."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        os.kill(os.getpid(), signum)
        return result
    monkeypatch.setattr(module, name, wrapper)
