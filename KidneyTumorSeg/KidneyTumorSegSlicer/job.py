"""One run of the command line for Slicer: a child process, its JSON events, and the results imported.

The widget polls a :class:`SegmentationJob` from a QTimer; scripts call its blocking ``wait()``. The job
watches the scene it works on: while the child runs, closing the scene, or removing its input volume or
output segmentation, cancels it, so no result is ever imported into a scene that no longer holds its nodes.
Once the child has finished, its result is imported at once, in the same call; nothing cancels that.
"""
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Optional

from .errors import SegmentationCancelled, SegmentationError
from .measurementNodes import readMeasurements, removeMeasurementNodes, showMeasurements
from .segmentationNodes import MEASURE_MIDLINE

LOGGER = logging.getLogger(__name__)
EXIT_MEANINGS = {1: "segmentation failed", 2: "internal usage error", 3: "the input or output was refused",
                 4: "the model could not be loaded or verified", 130: "interrupted", 143: "stopped"}
MODES = ("fast", "default", "accurate")


@dataclass(frozen=True)
class RunOptions:
    model: str = "default"
    device: str = "auto"
    mode: str = "default"
    computeMeasurements: bool = False  # the command line's --measure, imported as a table and lines
    minConfidence: Optional[float] = None  # --min-confidence: lesions below it are listed, not drawn
    cystByDensity: Optional[bool] = None  # --cyst-by-density on/off (water-density tumors -> cysts); None: the model's


def stopProcessTree(process, timeout=5.0):
    """Stop ``process`` and every process it started: SIGTERM (the command line then removes its partial files),
    SIGKILL after ``timeout`` s. Inside Slicer the child is the PythonSlicer launcher (CTK AppLauncher), which
    runs the interpreter as a child of its own and passes no signal on: stopping the launcher alone would leave
    the segmentation running. On POSIX the child leads its own process group (``processArguments``); Windows
    has no SIGTERM, so there ``taskkill /T /F`` ends the tree at once."""
    if process.poll() is not None:  # ended (the launcher waits for its interpreter); its pid may be reused
        return
    if os.name == "nt":
        taskkill = os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "taskkill.exe")
        try:
            subprocess.run([taskkill, "/T", "/F", "/PID", str(process.pid)], capture_output=True, check=False,
                           timeout=timeout, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        except (OSError, subprocess.TimeoutExpired):
            pass  # the kill below still ends the child itself
    else:
        _signalGroup(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if os.name == "nt":
        return
    while _signalGroup(process.pid, 0):  # grandchildren still cleaning up; once empty, the id is not signalled again
        if time.monotonic() >= deadline:
            _signalGroup(process.pid, signal.SIGKILL)
            return
        time.sleep(0.05)


def _signalGroup(groupId, signalNumber):
    """Send ``signalNumber`` to the process group; False when the group has no live process left (macOS says
    EPERM for a group of zombies)."""
    try:
        os.killpg(groupId, signalNumber)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class SegmentationJob:
    """One out-of-process run. ``poll()`` (non-blocking, call it from a timer) returns True once finished;
    until then ``state`` is "running", then "importing" while the result goes into the scene (no longer
    cancellable), then "done" (``segmentationNode`` holds the result; ``tableNode``, ``lineNodes`` the
    measurements), "failed" (``error``) or "cancelled" (``error`` says why)."""

    def __init__(self, logic, volumeNode, segmentationNode, options: RunOptions, progress=None, log=None):
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError("Select a CT volume that has image data.")
        if options.mode not in MODES:
            raise ValueError(f"Mode must be 'fast', 'default' or 'accurate', not {options.mode!r}.")
        self.logic, self.volumeNode, self.segmentationNode, self.options = logic, volumeNode, segmentationNode, options
        self.progress, self.log = progress or (lambda f, t: None), log or LOGGER.info
        self.state, self.error, self.outputs = "running", None, {}
        self.tableNode, self.lineNodes = None, []
        self.uncertain = []  # lesions --min-confidence left out (the command line's dicts)
        self.midlineX = MEASURE_MIDLINE  # the body's midline the command line named left and right by
        self.unsureBelow = None  # kept lesions below it are uncertain (the command line's unsure_below)
        self.warnings = []  # for the user, not only the log: e.g. an unverified model, a skipped output
        self._errorEvent, self._tail, self._lines = None, [], queue.Queue()
        self._scene, self._observations = volumeNode.GetScene(), []
        self._tmp = tempfile.mkdtemp(prefix="KidneyTumorSeg-", dir=logic.temporaryRoot())
        try:
            inputPath = os.path.join(self._tmp, "input.nrrd")
            logic.volumeToFile(volumeNode, inputPath)
            command = logic.commandLine(inputPath, os.path.join(self._tmp, "output"), options)
            self.log("Running: " + " ".join(command))
            self.process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
                env=logic.processEnvironment(), text=True, encoding="utf-8", errors="replace", bufsize=1,
                **logic.processArguments())
        except BaseException:
            self._cleanup()
            raise
        # A reader thread, because pipes cannot be polled without blocking on every platform (Windows).
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if self._scene is not None:
            self._observations = [self._scene.AddObserver(self._scene.StartCloseEvent, self.onSceneStartClose),
                                  self._scene.AddObserver(self._scene.NodeRemovedEvent, self.onNodeRemoved)]

    # -- the scene ------------------------------------------------------------------------------
    def onSceneStartClose(self, caller=None, event=None):
        self.cancel("Cancelled: the scene was closed.")

    def onNodeRemoved(self, caller=None, event=None):
        for node in (self.volumeNode, self.segmentationNode):
            if node is not None and self.state == "running" and not self._scene.IsNodePresent(node):
                self.cancel(f"Cancelled: '{node.GetName()}' was removed from the scene.")

    # -- the child's output ---------------------------------------------------------------------
    def _read(self):
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\r\n"))
        self.process.stdout.close()

    def handleLine(self, line):
        """One line of the child's output: a JSON event (progress, warnings, results) or a line for the log."""
        event = None
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                pass
        if not isinstance(event, dict) or "event" not in event:
            if line.strip():
                self._tail = (self._tail + [line])[-20:]
                self.log(line)
            return
        kind = event["event"]
        if kind == "progress":  # keep the last 5 % for reading the result back into the scene
            self.progress(0.95 * float(event.get("fraction", 0.0)), str(event.get("stage", "")))
        elif kind == "case_done":
            self._caseDone(event)
        elif kind in ("error", "case_failed"):
            self._errorEvent = event.get("message", "")
            self.log("Error: " + self._errorEvent)
        elif kind == "warning":
            self._warn(str(event.get("message", "")))
        elif kind == "start":
            self.log(f"Model: {event.get('model')}, mode: {event.get('mode')}")

    def _caseDone(self, event):
        self.outputs = event.get("outputs", {})
        # the segments' left and right, as in the command line's files (None: it knew no midline); an older
        # command line without the key: measured on the volume
        self.midlineX = event.get("midline_x", MEASURE_MIDLINE)
        self.unsureBelow = event.get("unsure_below")
        volumes = ", ".join(f"{k} {v:.1f} mL" for k, v in event.get("volumes_ml", {}).items())
        self.log(f"{event.get('message', '')} {volumes} ({event.get('seconds', 0):.1f} s)".strip())
        for warning in event.get("warnings", []):  # e.g. an output the input cannot support
            self._warn(str(warning))
        self.uncertain = event.get("uncertain_lesions", [])
        if self.uncertain:  # the library is imported late, as in segmentationNodes (it needs the installed packages)
            from KidneyTumorSegLib.confidence import confidence_text
        for u in self.uncertain:  # printed unlike the threshold it fell below
            self.log(f"Uncertain {u['kind']} ({u['side'] or 'no side'}, {u['volume_ml']:.1f} mL, confidence "
                     f"{confidence_text(u['confidence'], event.get('min_confidence'))}): not drawn")

    def _warn(self, message):
        if message not in self.warnings:  # one warning may come as an event and again in case_done
            self.warnings.append(message)
        self.log("Warning: " + message)

    # -- running --------------------------------------------------------------------------------
    def poll(self):
        if self.state == "importing":  # a nested event loop's poll while the result goes into the scene
            return False
        if self.state != "running":
            return True
        while self.state == "running":  # a progress callback may cancel
            try:
                self.handleLine(self._lines.get_nowait())
            except queue.Empty:
                break
        if self.state != "running":
            return True
        returncode = self.process.poll()
        if returncode is None or self._reader.is_alive():
            return False
        while not self._lines.empty():  # lines that arrived between the drain and the exit
            self.handleLine(self._lines.get_nowait())
        self.state = "importing"  # too late to cancel: a cancel now would delete the files being read
        try:
            self._finish(returncode)
        except Exception as exc:
            self.state, self.error = "failed", str(exc) or exc.__class__.__name__
            LOGGER.exception("KidneyTumorSeg failed")
        finally:
            if self.state == "importing":  # interrupted, e.g. Ctrl+C in a script
                self.state, self.error = "failed", "Interrupted while the result was imported."
            self._cleanup()
        return True

    def _finish(self, returncode):
        if returncode not in (0, 5) or "labelmap" not in self.outputs:  # 5: done, an optional output skipped
            detail = self._errorEvent or "\n".join(self._tail[-5:]) or "no message"
            meaning = EXIT_MEANINGS.get(returncode, f"exit code {returncode}")
            raise SegmentationError(f"Segmentation failed ({meaning}): {detail}")
        # Read before anything is imported: a missing or unreadable file leaves every node as it was.
        measured = readMeasurements(self.outputs) if self.options.computeMeasurements else None
        self.progress(0.96, "Importing segments")
        self.segmentationNode = self.logic.importLabelmap(
            self.outputs["labelmap"], segmentationNode=self.segmentationNode,
            referenceVolumeNode=self.volumeNode, confidence=self.outputs.get("confidence"), midlineX=self.midlineX,
            unsureBelow=self.unsureBelow)
        if measured is None:  # an earlier run's measurements would describe segments that are gone
            removeMeasurementNodes(self.segmentationNode)
        else:
            self.progress(0.98, "Importing measurements")
            self.tableNode, self.lineNodes = showMeasurements(measured, self.segmentationNode, self.volumeNode)
        self.state = "done"
        self.progress(1.0, "Done")

    def cancel(self, reason="Cancelled.", timeout=5.0):
        """Stop the child process (SIGTERM lets it remove partial files; kill after ``timeout`` s). Returns
        whether it stopped the run: a finished run, or one whose result is being imported, goes on."""
        if self.state == "importing":
            self.log("Too late to cancel: the result is being imported.")
        if self.state != "running":
            return False
        self.state, self.error = "cancelled", reason
        try:
            stopProcessTree(self.process, timeout)
            self._reader.join(timeout)
        finally:
            self._cleanup()
        self.log(reason)
        return True

    def wait(self, interval=0.05):
        """Block until finished; return the segmentation node or raise SegmentationError/Cancelled."""
        if self.state == "importing":  # e.g. from a progress callback of the import: it would wait for itself
            raise SegmentationError("wait() was called while this run's result is being imported.")
        try:
            while not self.poll():
                time.sleep(interval)
        except BaseException:  # a failing callback or Ctrl+C must not leave the process or files behind
            self.cancel()
            raise
        if self.state == "cancelled":
            raise SegmentationCancelled(self.error)
        if self.state == "failed":
            raise SegmentationError(self.error)
        return self.segmentationNode

    def statusText(self):
        """One line for the module's status label: the result, why it stopped, and the run's warnings."""
        if self.state == "done":
            text = f"Done: {self.segmentationNode.GetSegmentation().GetNumberOfSegments()} segments."
            if self.tableNode is not None:
                text += f" Measurements: '{self.tableNode.GetName()}'."
        elif self.state == "cancelled":
            text = f"{self.error} The output segmentation was not changed."
        elif self.state == "failed":
            text = "Failed; see the log."
        elif self.state == "importing":
            text = "Importing the result..."
        else:
            text = "Running..."
        if self.warnings:
            text += " Warning: " + " ".join(self.warnings)
        return text

    def _cleanup(self):
        process = getattr(self, "process", None)
        # closing the child's standard input stops it (--stop-when-stdin-closes); by now it has ended or been stopped
        if process is not None and process.stdin is not None:
            process.stdin.close()
        for tag in self._observations:
            self._scene.RemoveObserver(tag)
        self._observations = []
        shutil.rmtree(self._tmp, ignore_errors=True)
