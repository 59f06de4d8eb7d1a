"""KidneyTumorSeg's logic over MRML: volume node -> file -> `kidney-tumor-seg` (out of process) -> segmentation
node, measurement table and diameter lines.

No Qt here: the widget polls a :class:`~KidneyTumorSegSlicer.job.SegmentationJob` from a QTimer; scripts call
the blocking ``segment(volumeNode)``. The command line runs in a child Python process (PythonSlicer inside
Slicer), so the GUI stays alive, cancel is a process kill, and the results are the command line's, byte for
byte: segments and measurements alike (``--measure``; nothing is computed on the GUI thread).
"""
import importlib.util
import os
import shutil
import subprocess
import sys

import slicer
import vtk

from .errors import SegmentationError
from .job import RunOptions, SegmentationJob
from .measurementNodes import readMeasurementFiles, showMeasurements
from .segmentationNodes import MEASURE_MIDLINE, exportSurfaces, importLabelmap

# The folder that holds KidneyTumorSegLib: the module folder, in a checkout and in an installed extension.
LIBRARY_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Python module name -> pip requirement; torch is installed through the PyTorch Utils extension.
REQUIRED_PACKAGES = {"numpy": "numpy", "scipy": "scipy", "SimpleITK": "SimpleITK", "torch": "torch"}
TORCH_REQUIREMENT = ">=2.1"


class KidneyTumorSegMRMLLogic:
    """Segment kidneys, kidney tumors and cysts of a CT volume node into a segmentation node.

    ``python`` overrides the interpreter that runs the command line (default: PythonSlicer inside Slicer,
    else this interpreter); ``tempDir`` where the temporary input/output folders go (default: Slicer's).
    """

    def __init__(self, python=None, tempDir=None):
        super().__init__()  # cooperative: the module's logic mixes this class with ScriptedLoadableModuleLogic
        self.python, self.tempDir = python, tempDir
        self.job = None

    # -- environment ----------------------------------------------------------------------------
    def pythonExecutable(self):
        if self.python:
            return self.python
        if hasattr(slicer, "app"):  # Slicer's own interpreter may be the app binary: use PythonSlicer
            found = shutil.which("PythonSlicer", path=os.path.dirname(sys.executable)) or shutil.which("PythonSlicer")
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
        env["PYTHONPATH"] = os.pathsep.join([LIBRARY_PARENT] + [p for p in [env.get("PYTHONPATH")] if p])
        env["PYTHONUNBUFFERED"] = "1"
        return env

    @staticmethod
    def processArguments():
        """Popen arguments for the child: on POSIX a session (and process group) of its own, so that Cancel can
        stop it with everything it started (``job.stopProcessTree``); on Windows no console window flashing up.
        So a terminal's Ctrl+C no longer reaches the child: Slicer stops it when it quits (the widget's cleanup),
        a script's ``wait()`` cancels it on KeyboardInterrupt, and if Slicer crashes, the child's standard input
        closes and it stops (--stop-when-stdin-closes), where Slicer's launcher passes standard input on: on
        Windows and macOS, and on Linux from Slicer 5.10 (the launcher of 5.4-5.8 there is built with Qt 4,
        which cannot; the run then goes on until its next progress line meets the closed pipe)."""
        if os.name != "nt":
            return {"start_new_session": True}
        info = subprocess.STARTUPINFO()
        info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
        info.wShowWindow = 0
        return {"startupinfo": info}

    def commandLine(self, inputPath, outputFolder, options: RunOptions):
        """The command that segments ``inputPath`` into ``outputFolder`` as ``options`` say."""
        # "-m KidneyTumorSegLib" is the console script's entry: Cancel's SIGTERM is handled from the start.
        # The job holds the child's standard input open: if Slicer dies, it closes, and the run stops.
        command = [self.pythonExecutable(), "-m", "KidneyTumorSegLib", "segment", str(inputPath),
                   "-o", str(outputFolder), "--model", str(options.model), "--device", options.device,
                   "--json-progress", "--format", ".nrrd", "--confidence-map",  # NRRD: double-precision geometry
                   "--stop-when-stdin-closes"]
        if options.computeMeasurements:
            command.append("--measure")
        if options.minConfidence is not None:
            command += ["--min-confidence", str(float(options.minConfidence))]
        if options.cystByDensity is not None:
            command += ["--cyst-by-density", "on" if options.cystByDensity else "off"]
        return command + {"fast": ["--fast"], "accurate": ["--accurate"]}.get(options.mode, [])

    # -- dependencies and installed files ---------------------------------------------------------
    def missingDependencies(self):
        """pip names of the packages the segmentation needs and this Python lacks."""
        return [pip for module, pip in REQUIRED_PACKAGES.items() if importlib.util.find_spec(module) is None]

    def installDependencies(self, confirm):
        """Install missing packages after ``confirm(message) -> bool`` agreed; True when nothing is missing."""
        missing = self.missingDependencies()
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
        return not self.missingDependencies()

    @staticmethod
    def modelNames():
        """Names in the installed models.json, "default" first (empty while no registry is installed)."""
        from KidneyTumorSegLib.models import registered_names
        return registered_names()

    def checkSelfTestInputs(self):
        """The installed sample CT's path. Raises SegmentationError, naming each missing or damaged file, when
        the sample or the default model is not installed as it should be: a self-test without them fails."""
        from KidneyTumorSegLib.errors import InputError
        from KidneyTumorSegLib.models import resolve_model
        from KidneyTumorSegLib.sample import sample_ct_path
        problems, sample = [], None
        try:
            sample = sample_ct_path()
        except InputError as exc:
            problems.append(str(exc))
        try:
            resolve_model("default")  # the registry, the files, their SHA-256
        except InputError as exc:
            problems.append(str(exc))
        if problems:
            raise SegmentationError("The self-test cannot run: " + " ".join(problems))
        return str(sample)

    # -- nodes <-> files ------------------------------------------------------------------------
    def volumeToFile(self, volumeNode, path):
        """Write ``volumeNode`` (scalar) to ``path`` with its exact IJK-to-RAS geometry, as ITK/LPS. The parent
        transform is left out: the results come back into the volume's own frame, under the same transform."""
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

    def importLabelmap(self, labelmap, geometry=None, segmentationNode=None, referenceVolumeNode=None,
                       confidence=None, midlineX=MEASURE_MIDLINE, unsureBelow=None):
        """A KiTS label map (file, or array + Geometry) as segments: ``segmentationNodes.importLabelmap``."""
        return importLabelmap(labelmap, geometry, segmentationNode, referenceVolumeNode, confidence, midlineX,
                              unsureBelow)

    def importMeasurements(self, csvPath, jsonPath, segmentationNode, volumeNode=None):
        """The command line's measurement files as the segmentation's table node and diameter lines (reused
        when it has them; the lines under the volume's parent transform): (table node, line nodes)."""
        return showMeasurements(readMeasurementFiles(csvPath, jsonPath), segmentationNode, volumeNode)

    def exportSurfaces(self, segmentationNode, folder, overwrite=False):
        """Each segment's closed surface as an STL file (LPS mm) in ``folder``: KidneyTumorSegSurfaces."""
        return exportSurfaces(segmentationNode, folder, overwrite=overwrite)

    # -- running --------------------------------------------------------------------------------
    def start(self, volumeNode, outputSegmentationNode=None, model="default", device="auto", mode="default",
              progress=None, log=None, computeMeasurements=False, minConfidence=None, cystByDensity=None):
        """Start a run and return its :class:`SegmentationJob` at once (poll it from a timer).
        ``minConfidence``: lesions below it are left out and listed as uncertain (--min-confidence).
        ``cystByDensity``: True/False calls water-density tumors cysts or never; None: as the model recommends."""
        if self.job is not None and self.job.state in ("running", "importing"):
            raise SegmentationError("A segmentation is already running; wait for it, or cancel it while it runs.")
        options = RunOptions(str(model), device, mode, bool(computeMeasurements), minConfidence, cystByDensity)
        self.job = SegmentationJob(self, volumeNode, outputSegmentationNode, options, progress, log)
        return self.job

    def segment(self, volumeNode, outputSegmentationNode=None, model="default", device="auto", mode="default",
                progress=None, log=None, computeMeasurements=False, minConfidence=None, cystByDensity=None):
        """Blocking run for scripts; returns the segmentation node. ``progress(fraction, text)`` may call
        ``cancel()``; failures raise SegmentationError (SegmentationCancelled when cancelled)."""
        return self.start(volumeNode, outputSegmentationNode, model, device, mode, progress, log,
                          computeMeasurements, minConfidence, cystByDensity).wait()

    def cancel(self, reason="Cancelled."):
        """Cancel the running job, if any; ``reason`` becomes its ``error`` and the status line's text.
        Returns whether a run was stopped (not once its result is being imported)."""
        return self.job is not None and self.job.cancel(reason)
