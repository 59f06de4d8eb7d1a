"""reproduce's step runner: each step runs once (its settings are stored in WORK/steps/NAME.json when it
succeeds), in a child process whose output is teed to WORK/reproduce.log; independent steps side by side."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import KidneyTumorSegLib
from KidneyTumorSegLib.atomic import write_text
from KidneyTumorSegLib.inference import THREADS_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS = "reproduce_settings.json"  # in a training run's folder: the settings it began with


class StepError(RuntimeError):
    pass


class Runner:
    """Runs steps once: a step's settings are stored in WORK/steps/NAME.json when it succeeds."""

    def __init__(self, work: Path):
        self.work = work
        (work / "steps").mkdir(parents=True, exist_ok=True)
        self.log = open(work / "reproduce.log", "a", buffering=1)
        self.lock = threading.Lock()
        self.procs: List[subprocess.Popen] = []

    def marked(self, name: str, settings: Dict[str, Any]) -> bool:
        """Whether step NAME is marked done (StepError when it was done with other settings)."""
        marker = self.work / "steps" / f"{name}.json"
        if not marker.is_file():
            return False
        old = json.loads(marker.read_text(encoding="utf-8")).get("settings")
        if old != json.loads(json.dumps(settings)):
            raise StepError(f"Step '{name}' already ran in {self.work} with other settings ({marker}); use a new "
                            "--work folder, or delete that file (and the step's outputs) to redo it.")
        return True

    def done(self, name: str, settings: Dict[str, Any]) -> bool:
        if not self.marked(name, settings):
            return False
        self.say(f"== {name}: done earlier, skipped")
        return True

    def check_trainings(self, trainings: List[Tuple[str, Dict[str, Any], Path, List[str]]]) -> None:
        """Before any of (name, settings, run_dir, cmd) runs: each is done as now asked, or starts afresh, or
        resumes as it began; so that a refusal never comes after hours of another run side by side."""
        for name, settings, run_dir, cmd in trainings:
            if not self.marked(name, settings):
                same_start(cmd, run_dir, settings)

    def mark(self, name: str, settings: Dict[str, Any], seconds: float) -> None:
        marker = self.work / "steps" / f"{name}.json"
        write_text(marker, json.dumps({"settings": settings, "seconds": round(seconds, 1),
                                       "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))

    def say(self, text: str) -> None:
        with self.lock:  # whole lines, also when two steps run side by side
            print(text, flush=True)
            self.log.write(text + "\n")

    def train(self, cmd: List[str], run_dir: Path, settings: Dict[str, Any], tag: str = "",
              threads: Optional[int] = None) -> None:
        """A training step's command (run): first same_start, so that a run cut short resumes only as it began."""
        if not same_start(cmd, run_dir, settings):
            self.say(f"{tag}{run_dir} resumes without a record of the settings it began with (a run older than "
                     "that record): unchecked.")
        if "--resume" not in cmd:  # a fresh start: the record a later resume is checked against
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / SETTINGS, json.dumps(settings, indent=1))
        self.run(cmd, tag, threads)

    def run(self, cmd: List[str], tag: str = "", threads: Optional[int] = None) -> None:
        """A step's own command line, in a child process with this checkout on PYTHONPATH; output teed to the
        log (each line prefixed with ``tag`` when steps run side by side)."""
        self.say(f"{tag}$ " + " ".join(shlex.quote(c) for c in cmd))
        env = dict(os.environ)
        paths = [str(Path(KidneyTumorSegLib.__file__).resolve().parents[1]), str(REPO_ROOT)]
        env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        if threads:
            env[THREADS_ENV] = str(threads)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                bufsize=1)
        self.procs.append(proc)
        try:
            for line in proc.stdout:
                self.say(tag + line.rstrip("\n"))
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
        if rc != 0:
            raise StepError(f"Command failed (exit {rc}): {' '.join(cmd)}; see the output above and "
                            f"{self.work / 'reproduce.log'}. Rerun the same reproduce command to continue.")

    def step(self, name: str, settings: Dict[str, Any], action) -> None:
        if self.done(name, settings):
            return
        self.say(f"== {name}")
        t0 = time.perf_counter()
        action()
        self.mark(name, settings, time.perf_counter() - t0)

    def steps(self, steps: List[Tuple[str, Dict[str, Any], Any]], jobs: int) -> None:
        """Independent steps (the two stages' preprocessing or training), ``jobs`` at a time; each action
        gets (tag, threads): its output prefix and its share of the CPU threads."""
        if jobs <= 1 or len(steps) <= 1:
            for name, settings, action in steps:
                self.step(name, settings, lambda a=action: a("", None))
            return
        threads = max(1, (os.cpu_count() or 1) // jobs)
        errors: List[BaseException] = []

        def one(name, settings, action):
            try:
                self.step(name, settings, lambda: action(f"[{name}] ", threads))
            except BaseException as exc:  # reported after the others finished
                errors.append(exc)
        with ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(one, *st) for st in steps]
            try:
                for f in futures:
                    f.result()
            except KeyboardInterrupt:
                for proc in self.procs:
                    proc.terminate()
                raise
        if errors:
            raise errors[0]


def same_start(cmd: List[str], run_dir: Path, settings: Dict[str, Any]) -> bool:
    """A training left unfinished continues from its last.pt (``--resume`` in cmd) and must do so with the
    settings it began with: other ones (another --stage2-init, config or seed) would be ignored by the resumed
    run, yet stamped on its result (Runner.train records a fresh start's in run_dir/reproduce_settings.json).
    Writes nothing; False: a resume with no record to check against."""
    stamp, now = run_dir / SETTINGS, json.loads(json.dumps(settings))
    if "--resume" not in cmd:
        return True
    if not stamp.is_file():
        return False
    try:
        old = json.loads(stamp.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise StepError(f"{stamp} cannot be read ({exc}); delete it to resume that run unchecked, or delete "
                        f"{run_dir} to start it again.") from None
    if old != now:
        changed = ", ".join(f"{k} ({'its content' if k == 'config' else f'{old.get(k)} -> {now.get(k)}'})"
                            for k in sorted(set(old) | set(now)) if old.get(k) != now.get(k))
        raise StepError(f"{run_dir} holds a training left unfinished that began with other settings: {changed} "
                        f"({stamp}). Rerun with the settings it began with, use a new --work folder, or delete "
                        "that run folder to start it again.")
    return True


def py(module: str, *args: Any) -> List[str]:
    return [sys.executable, "-m", module, *[str(a) for a in args]]
