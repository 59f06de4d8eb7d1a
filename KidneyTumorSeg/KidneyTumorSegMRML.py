"""KidneyTumorSeg logic over MRML: volume node -> file -> `kidney-tumor-seg` (out of process) -> segmentation node.

Imports only ``slicer``, ``vtk``, the standard library and, lazily, the pure core (``KidneyTumorSegLib``), so
the module loads even before torch/scipy are installed (``missing_dependencies`` reports them). No Qt here:
the widget polls a :class:`SegmentationJob` from a QTimer; scripts call the blocking
``KidneyTumorSegLogic().segment(volumeNode)``. The segmentation runs in a child Python process (PythonSlicer
inside Slicer), so the GUI stays alive, cancel is a process kill, and the result is the CLI's, byte for byte.
"""
import importlib.util
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import slicer
import vtk
from KidneyTumorSegSegmentationNodes import ensure_converter_rules, export_surfaces, segmentation_from_map

LOGGER = logging.getLogger(__name__)
MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
# Python module name -> pip requirement; torch is installed through the PyTorch Utils extension.
REQUIRED_PACKAGES = {"numpy": "numpy", "scipy": "scipy", "SimpleITK": "SimpleITK", "torch": "torch"}
TORCH_REQUIREMENT = ">=2.1"
EXIT_MEANINGS = {1: "segmentation failed", 2: "internal usage error", 3: "the input or output was refused",
                 4: "the model could not be loaded or verified", 130: "interrupted", 143: "stopped"}


class SegmentationError(RuntimeError):
    """A run that failed; the message says what happened and, where possible, what to do."""


class SegmentationCancelled(SegmentationError):
    """The user cancelled the run; no output segmentation was changed."""


def _matrix_to_list(m):
    return [[m.GetElement(r, c) for c in range(4)] for r in range(4)]


def _ijk_to_ras(volumeNode):
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return m


class SegmentationJob:
    """One out-of-process run. ``poll()`` (non-blocking, call it from a timer) returns True once finished;
    then ``state`` is "done" (``segmentationNode`` holds the result), "failed" (``error``) or "cancelled"."""

    def __init__(self, logic, volumeNode, segmentationNode, model, device, mode, progress, log,
                 computeMeasurements=False, minConfidence=None):
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError("Select a CT volume that has image data.")
        if mode not in ("fast", "default", "accurate"):
            raise ValueError(f"Mode must be 'fast', 'default' or 'accurate', not {mode!r}.")
        self.logic, self.volumeNode, self.segmentationNode = logic, volumeNode, segmentationNode
        self.progress, self.log = progress or (lambda f, t: None), log or LOGGER.info
        self.computeMeasurements = computeMeasurements
        self.state, self.error, self.tableNode, self.outputs = "running", None, None, {}
        self.lineNodes, self.uncertain = [], []  # uncertain: lesions --min-confidence left out (dicts)
        self.warnings = []  # warnings about the run (e.g. an unverified model), for the user
        self._errorEvent, self._tail, self._lines = None, [], queue.Queue()
        self._tmp = tempfile.mkdtemp(prefix="KidneyTumorSeg-", dir=logic.temporaryRoot())
        try:
            inputPath = os.path.join(self._tmp, "input.nrrd")
            logic.volume_to_file(volumeNode, inputPath)
            # "-m KidneyTumorSegLib" is the console script's entry: Cancel's SIGTERM is handled from the start.
            cmd = [logic.pythonExecutable(), "-m", "KidneyTumorSegLib", "segment", inputPath,
                   "-o", os.path.join(self._tmp, "output"), "--model", str(model), "--device", device,
                   "--json-progress", "--format", ".nrrd", "--confidence-map"]  # NRRD: double-precision geometry
            if minConfidence is not None:
                cmd += ["--min-confidence", str(float(minConfidence))]
            cmd += {"fast": ["--fast"], "accurate": ["--accurate"]}.get(mode, [])
            self.log("Running: " + " ".join(cmd))
            self._process = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=logic.processEnvironment(), text=True, encoding="utf-8", errors="replace", bufsize=1,
                **_hidden_console())
        except BaseException:
            self._cleanup()
            raise
        # A reader thread, because pipes cannot be polled without blocking on every platform (Windows).
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\r\n"))
        self._process.stdout.close()

    def _handle(self, line):
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
            self.outputs = event.get("outputs", {})
            volumes = ", ".join(f"{k} {v:.1f} mL" for k, v in event.get("volumes_ml", {}).items())
            self.log(f"{event.get('message', '')} {volumes} ({event.get('seconds', 0):.1f} s)".strip())
            for warning in event.get("warnings", []):
                self.log("Warning: " + warning)
            self.uncertain = event.get("uncertain_lesions", [])
            for u in self.uncertain:
                self.log(f"Uncertain {u['kind']} ({u['side'] or 'no side'}, {u['volume_ml']:.1f} mL, confidence "
                         f"{u['confidence']:.2f}): not drawn")
        elif kind in ("error", "case_failed"):
            self._errorEvent = event.get("message", "")
            self.log("Error: " + self._errorEvent)
        elif kind == "warning":
            self.warnings.append(str(event.get("message", "")))
            self.log("Warning: " + self.warnings[-1])
        elif kind == "start":
            self.log(f"Model: {event.get('model')}, mode: {event.get('mode')}")

    def poll(self):
        if self.state != "running":
            return True
        while self.state == "running":  # a progress callback may cancel
            try:
                self._handle(self._lines.get_nowait())
            except queue.Empty:
                break
        if self.state != "running":
            return True
        returncode = self._process.poll()
        if returncode is None or self._reader.is_alive():
            return False
        while not self._lines.empty():  # lines that arrived between the drain and the exit
            self._handle(self._lines.get_nowait())
        try:
            self._finish(returncode)
        except Exception as exc:
            self.state, self.error = "failed", str(exc) or exc.__class__.__name__
            LOGGER.exception("KidneyTumorSeg failed")
        finally:
            self._cleanup()
        return True

    def _finish(self, returncode):
        if returncode != 0 or "labelmap" not in self.outputs:
            detail = self._errorEvent or "\n".join(self._tail[-5:]) or "no message"
            meaning = EXIT_MEANINGS.get(returncode, f"exit code {returncode}")
            raise SegmentationError(f"Segmentation failed ({meaning}): {detail}")
        self.progress(0.96, "Importing segments")
        confidence = self.outputs.get("confidence")
        self.segmentationNode = self.logic.import_labelmap(
            self.outputs["labelmap"], segmentationNode=self.segmentationNode,
            referenceVolumeNode=self.volumeNode, confidence=confidence)
        if self.computeMeasurements:
            self.progress(0.98, "Measuring")
            self.tableNode, self.lineNodes = self.logic.measurements_to_nodes(
                self.outputs["labelmap"], self.volumeNode, confidencePath=confidence, uncertain=self.uncertain)
        self.state = "done"
        self.progress(1.0, "Done")

    def cancel(self, timeout=5.0):
        """Stop the child process (SIGTERM lets it remove partial files; kill after ``timeout`` s)."""
        if self.state != "running":
            return
        self.state, self.error = "cancelled", "Segmentation cancelled."
        try:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._reader.join(timeout)
        finally:
            self._cleanup()
        self.log("Cancelled.")

    def wait(self, interval=0.05):
        """Block until finished; return the segmentation node or raise SegmentationError/Cancelled."""
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

    def _cleanup(self):
        shutil.rmtree(self._tmp, ignore_errors=True)


def _hidden_console():
    if os.name != "nt":
        return {}
    info = subprocess.STARTUPINFO()  # no console window flashing up on Windows
    info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
    info.wShowWindow = 0
    return {"startupinfo": info}


class KidneyTumorSegLogic:
    """Segment kidneys, kidney tumors and cysts of a CT volume node into a segmentation node.

    ``python`` overrides the interpreter that runs the CLI (default: PythonSlicer inside Slicer, else this
    interpreter); ``tempDir`` where the temporary input/output folders go (default: Slicer's temp folder).
    """

    def __init__(self, python=None, tempDir=None):
        self.python, self.tempDir = python, tempDir
        self.job = None

    # -- environment ----------------------------------------------------------------------------
    def pythonExecutable(self):
        if self.python:
            return self.python
        if hasattr(slicer, "app"):  # Slicer's own interpreter may be the app binary: use PythonSlicer
            here = shutil.which("PythonSlicer", path=os.path.dirname(sys.executable))
            found = here or shutil.which("PythonSlicer")
            if found:
                return found
        return sys.executable

    def temporaryRoot(self):
        if self.tempDir:
            return self.tempDir
        return getattr(slicer.app, "temporaryPath", None) if hasattr(slicer, "app") else None

    def processEnvironment(self):
        # Inside Slicer the launcher's startup environment is what PythonSlicer expects (as in
        # slicer.util.launchConsoleProcess); the module folder goes on PYTHONPATH for KidneyTumorSegLib.
        env = dict(slicer.util.startupEnvironment()) if hasattr(slicer, "app") else dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([MODULE_DIR] + [p for p in [env.get("PYTHONPATH")] if p])
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # -- dependencies -----------------------------------------------------------------------------
    def missing_dependencies(self):
        """pip names of the packages the segmentation needs and this Python lacks."""
        return [pip for module, pip in REQUIRED_PACKAGES.items() if importlib.util.find_spec(module) is None]

    def install_dependencies(self, confirm):
        """Install missing packages after ``confirm(message) -> bool`` agreed; True when nothing is missing."""
        missing = self.missing_dependencies()
        if not missing:
            return True
        if not confirm(f"Kidney Tumor Segmentation needs these Python packages: {', '.join(missing)}. "
                       "Download and install them now? This may take several minutes."):
            return False
        if "torch" in missing:
            try:
                import PyTorchUtils  # the PyTorch extension picks the CUDA build matching the driver
            except ImportError:
                raise SegmentationError("PyTorch is missing: install the 'PyTorch' extension from the "
                                        "Extensions Manager, restart Slicer, then try again.") from None
            # Already confirmed above, so no second dialog (askConfirmation=False).
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                return False
        others = [p for p in missing if p != "torch"]
        if others:
            slicer.util.pip_install(" ".join(others))
        importlib.invalidate_caches()
        return not self.missing_dependencies()

    # -- volume -> file -------------------------------------------------------------------------
    def volume_to_file(self, volumeNode, path):
        """Write ``volumeNode`` (scalar) to ``path`` with its exact IJK-to-RAS geometry, as ITK/LPS."""
        from KidneyTumorSegLib.geometry import Geometry
        from KidneyTumorSegLib.image_io import write_image
        image = volumeNode.GetImageData() if volumeNode else None
        if image is None or image.GetNumberOfScalarComponents() != 1:
            raise ValueError("The input must be a scalar (single-component) volume with image data.")
        directions = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASDirectionMatrix(directions)
        flip = (-1.0, -1.0, 1.0)  # RAS -> LPS: ITK direction/origin = diag(-1, -1, 1) @ RAS
        direction = [flip[r] * directions.GetElement(r, c) for r in range(3) for c in range(3)]
        origin = [f * o for f, o in zip(flip, volumeNode.GetOrigin())]
        geometry = Geometry(volumeNode.GetSpacing(), origin, direction)
        # arrayFromVolume is a (k, j, i) view of the node's voxels; write_image copies, never writes back.
        return write_image(slicer.util.arrayFromVolume(volumeNode), geometry, path)

    # -- label map -> segmentation ----------------------------------------------------------------
    def import_labelmap(self, labelmap, geometry=None, segmentationNode=None, referenceVolumeNode=None,
                        confidence=None):
        """Read a KiTS label map (file path, or (z, y, x) array + Geometry) into a segmentation node.

        One segment per structure and side, named, colored and tagged with its terminology and, given the
        cascade's ``confidence`` map (path or array), its confidence (``KidneyTumorSeg.Confidence`` and a
        ``Description`` listing each lesion's volume and confidence). The segments are
        built in a temporary segmentation and copied into ``segmentationNode`` only when complete, so a
        failure leaves an existing node as it was; a new node "<volume> kidneys" is made when None.
        """
        from KidneyTumorSegLib.image_io import read_labelmap
        from KidneyTumorSegLib.segments import segments_from_labels
        ensure_converter_rules()
        if isinstance(labelmap, (str, os.PathLike)):
            image = read_labelmap(labelmap)
            labels, geometry = image.array, image.geometry
        else:
            labels = labelmap
            if geometry is None or not hasattr(labels, "shape"):
                raise ValueError("Pass a label map file, or a (z, y, x) numpy array and its Geometry.")
        ras = geometry.affine()
        ras[:2] *= -1.0  # LPS -> RAS
        if referenceVolumeNode is not None:
            dims = referenceVolumeNode.GetImageData().GetDimensions()
            reference = _matrix_to_list(_ijk_to_ras(referenceVolumeNode))
            if tuple(labels.shape[::-1]) != tuple(dims) or abs(ras - reference).max() > 1e-3:
                raise SegmentationError("The label map does not lie on the reference volume's voxel grid.")
            ras = reference  # the volume's own matrix, exactly (files round to float precision)
        toWorld = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                toWorld.SetElement(r, c, float(ras[r][c]))
        segMap, infos = segments_from_labels(labels, geometry)
        tags = {}
        if confidence is not None:
            from KidneyTumorSegLib.confidence import segment_confidences
            conf = read_labelmap(confidence).array if isinstance(confidence, (str, os.PathLike)) else confidence
            tags = segment_confidences(segMap, infos, conf, geometry)

        temporary = segmentation_from_map(segMap, infos, toWorld, tags)

        created = segmentationNode is None
        if created:
            name = f"{referenceVolumeNode.GetName()} kidneys" if referenceVolumeNode else "Kidneys"
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            segmentationNode.CreateDefaultDisplayNodes()
        wasModifying = segmentationNode.StartModify()
        try:
            segmentationNode.GetSegmentation().DeepCopy(temporary)  # replaces the old segments at once
            if referenceVolumeNode is not None:
                segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
                # Same frame as the volume, also when the volume sits under a transform.
                segmentationNode.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
        finally:
            segmentationNode.EndModify(wasModifying)
        if segmentationNode.GetDisplayNode() is not None:
            segmentationNode.CreateClosedSurfaceRepresentation()  # 3D display
        return segmentationNode

    # -- measurements ---------------------------------------------------------------------------
    def measurements_to_nodes(self, labelmapPath, volumeNode=None, tableNode=None, confidencePath=None, uncertain=()):
        """Table node (one row per kidney, lesion and uncertain lesion: volumes, diameters, R.E.N.A.L., PADUA,
        confidence with ``confidencePath``) and a markups line per lesion's longest diameter."""
        from KidneyTumorSegMeasurementNodes import diameter_lines, measure_file, measurements_to_table
        measurements = measure_file(labelmapPath, confidencePath, uncertain)
        name = f"{volumeNode.GetName()} kidney measurements" if volumeNode else "Kidney measurements"
        prefix = f"{volumeNode.GetName()} " if volumeNode else ""
        return measurements_to_table(measurements, name, tableNode), diameter_lines(measurements, prefix)

    def exportSurfaces(self, segmentationNode, folder, overwrite=False):
        """Each segment's closed surface as an STL file (LPS mm) in ``folder``: KidneyTumorSegSurfaces."""
        return export_surfaces(segmentationNode, folder, overwrite=overwrite)

    # -- running --------------------------------------------------------------------------------
    def start(self, volumeNode, outputSegmentationNode=None, model="default", device="auto", mode="default",
              progress=None, log=None, computeMeasurements=False, minConfidence=None):
        """Start a run and return its :class:`SegmentationJob` at once (poll it from a timer).
        ``minConfidence``: lesions below it are left out and listed as uncertain (CLI --min-confidence)."""
        if self.job is not None and self.job.state == "running":
            raise SegmentationError("A segmentation is already running; wait for it or cancel it.")
        self.job = SegmentationJob(self, volumeNode, outputSegmentationNode, model, device, mode, progress, log,
                                   computeMeasurements, minConfidence)
        return self.job

    def segment(self, volumeNode, outputSegmentationNode=None, model="default", device="auto", mode="default",
                progress=None, log=None, computeMeasurements=False, minConfidence=None):
        """Blocking run for scripts; returns the segmentation node. ``progress(fraction, text)`` may call
        ``cancel()``; failures raise SegmentationError (SegmentationCancelled when cancelled)."""
        return self.start(volumeNode, outputSegmentationNode, model, device, mode, progress, log,
                          computeMeasurements, minConfidence).wait()

    def cancel(self):
        if self.job is not None:
            self.job.cancel()
