"""Kidney Tumor Segmentation: the Slicer scripted module (GUI only; the work is in KidneyTumorSegSlicer).

Top-level imports are only Slicer's own (slicer, vtk, qt, ctk, the ScriptedLoadableModule machinery) and the
KidneyTumorSegSlicer package, which loads the core lazily: the module loads before torch is installed, and
importing it has no side effects (everything that needs the application runs in methods). This is the only
file at the top of the module folder: Slicer loads each .py there as a module.
"""
import logging
import os
from typing import Annotated

import ctk  # noqa: F401  (Slicer's module template convention: the .ui's CTK widgets)
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from KidneyTumorSegLib.sample import SAMPLE_FILE, SAMPLE_SHA256  # standard library only: import-safe
from KidneyTumorSegSlicer.errors import SegmentationError
from KidneyTumorSegSlicer.logic import KidneyTumorSegMRMLLogic

MODEL_CARD_URL = "https://github.com/KidneyTumorSeg/SlicerKidneyTumorSeg/blob/main/Resources/Models/README.md"
SAMPLE_NAME = "KidneyTumorSegCT"


def resourcePath(relativePath, moduleFile=None):
    """Path of a resource in an installed extension (``<qt-scripted-modules>/Resources``) or a source
    checkout (``<repo>/Resources``, beside the module folder); the first existing one, else the former."""
    here = os.path.dirname(os.path.abspath(moduleFile or __file__))
    candidates = [os.path.join(here, "Resources", relativePath),
                  os.path.join(os.path.dirname(here), "Resources", relativePath)]
    return os.path.normpath(next((c for c in candidates if os.path.exists(c)), candidates[0]))


def parameterWidgets(ui):
    """The .ui's widgets by the parameter each shows (its "SlicerParameterName" property), as connectGui finds
    them: for connectParametersToGui, whose tag disconnectGui needs. Slicer 5.4-5.8's connectGui returns no tag
    (fixed in 5.10), so every enter() would stack another set of connections and reset the combo boxes."""
    return {widget.property("SlicerParameterName"): widget for widget in vars(ui).values()
            if hasattr(widget, "property") and widget.property("SlicerParameterName")}


def sampleDataPath():
    """The shipped sample CT (Resources/SampleData), or None when the resources lack it."""
    path = resourcePath(os.path.join("SampleData", SAMPLE_FILE))
    return path if os.path.isfile(path) else None


#
# Module
#
class KidneyTumorSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Kidney Tumor Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["KidneyTumorSeg developers"]
        self.parent.helpText = (
            "Segments the kidneys, kidney tumors and kidney cysts of an abdominal CT with a two-stage network "
            "cascade, into one segment per structure and side with standard terminology. The network runs in a "
            "separate process: the application stays responsive and Cancel stops it. Accuracy, training data "
            f'and limits are in the <a href="{MODEL_CARD_URL}">model card</a>. For research use only, not '
            "for clinical decisions. License: the code is Apache-2.0; a model's weights have their own license, "
            "from their training data (the default model: CC BY-NC-SA 4.0, non-commercial research use only, "
            "as the KiTS and FLARE22 data it was made from).")
        self.parent.acknowledgementText = (
            "Models are trained on the KiTS19, KiTS21 and KiTS23 kidney tumor segmentation challenge data "
            "(N. Heller et al., Medical Image Analysis 2021, and kits-challenge.org). The network follows V-Net "
            "(F. Milletari, N. Navab, S.-A. Ahmadi, 3DV 2016) with the improvements and the coarse-to-fine "
            "cascade cited in the model card; the cascade and normalization choices follow nnU-Net "
            "(F. Isensee et al., Nature Methods 2021).")
        slicer.app.connect("startupCompleted()", registerSampleData)

    def resourcePath(self, relativePath):
        return resourcePath(relativePath)


def registerSampleData():
    """Offer the shipped sample CT in the Sample Data module; Sample Data checks it against SAMPLE_SHA256."""
    path = sampleDataPath()
    if path is None:
        logging.info("KidneyTumorSeg: no sample CT in Resources/SampleData; sample data not registered.")
        return
    import SampleData
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="KidneyTumorSeg", sampleName=SAMPLE_NAME,
        thumbnailFileName=resourcePath("Icons/KidneyTumorSeg.png"),
        uris=qt.QUrl.fromLocalFile(path).toString(), fileNames=SAMPLE_FILE,
        checksums=f"SHA256:{SAMPLE_SHA256}", nodeNames=SAMPLE_NAME)


#
# Parameter node: the GUI state, saved with the scene
#
@parameterNodeWrapper
class KidneyTumorSegParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    model: str = "default"  # a registered name or a model folder: bound by hand (choices come from models.json)
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    mode: Annotated[str, Choice(["fast", "default", "accurate"])] = "default"
    computeMeasurements: bool = True


#
# Logic: the MRML logic (KidneyTumorSegSlicer.logic) plus Slicer's parameter node; the class name gives the
# parameter node's tag. Scripts: KidneyTumorSeg.KidneyTumorSegLogic().segment(volumeNode)
#
class KidneyTumorSegLogic(ScriptedLoadableModuleLogic, KidneyTumorSegMRMLLogic):
    def __init__(self, python=None, tempDir=None):
        ScriptedLoadableModuleLogic.__init__(self)
        KidneyTumorSegMRMLLogic.__init__(self, python=python, tempDir=tempDir)

    def getParameterNode(self):
        return KidneyTumorSegParameterNode(super().getParameterNode())


#
# Widget
#
class KidneyTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = None

    def resourcePath(self, relativePath):
        return resourcePath(relativePath)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/KidneyTumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = KidneyTumorSegLogic()

        for name in self.logic.modelNames() or ["default"]:
            self.ui.modelComboBox.addItem(name)
        # Editable (a model folder may be typed), so bound by hand: connectGui's combo box needs fixed choices.
        self.ui.modelComboBox.connect("currentTextChanged(QString)", self.onModelChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.exportSurfacesButton.connect("clicked(bool)", self.onExportSurfacesButton)
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onPoll)
        self.initializeParameterNode()

    def cleanup(self):
        if self._job is not None:
            self._job.cancel("Cancelled: the module was closed.")
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        # Nothing watches a run once the module is left (the user may close the scene, edit or delete its
        # nodes), so leaving stops it; the output is left as it was.
        self.cancelRun("Cancelled: the module was left during the run.")
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event):
        # Before the parameter node goes: the job (it also watches the scene itself) stops and is reported.
        self.cancelRun("Cancelled: the scene was closed.")
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            # A label map is a scalar volume too, but the input selector hides it: the first CT-like one.
            first = next((n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                          if not n.IsA("vtkMRMLLabelMapVolumeNode")), None)
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = parameterNode
        if self._parameterNode:
            # The .ui's "SlicerParameterName" properties name the parameter each widget shows.
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(parameterWidgets(self.ui))
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._updateButtons()

    def onModelChanged(self, text):
        if self._parameterNode and self._parameterNode.model != text:
            self._parameterNode.model = text

    def _updateButtons(self, caller=None, event=None):
        if self._parameterNode and self.ui.modelComboBox.currentText != self._parameterNode.model:
            self.ui.modelComboBox.currentText = self._parameterNode.model
        running = self._job is not None
        hasInput = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.applyButton.enabled = hasInput and not running
        self.ui.applyButton.toolTip = "Segment kidneys, tumors and cysts" if hasInput else "Select an input CT"
        self.ui.cancelButton.enabled = running
        self.ui.exportSurfacesButton.enabled = bool(self._parameterNode and self._parameterNode.outputSegmentation
                                                    and not running)

    # -- running --------------------------------------------------------------------------------
    def onApplyButton(self):
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Kidney Tumor Segmentation could not start.", waitCursor=True):
            if self.logic.missingDependencies() and not self.logic.installDependencies(
                    lambda message: slicer.util.confirmOkCancelDisplay(message)):
                self._setStatus("Not started: required Python packages are missing.")
                return
            self.ui.logTextEdit.clear()
            self.ui.progressBar.value = 0
            self._job = self.logic.start(p.inputVolume, p.outputSegmentation, model=p.model, device=p.device,
                                         mode=p.mode, progress=self._onProgress, log=self._log,
                                         computeMeasurements=p.computeMeasurements)
            self._setStatus("Starting...")
            self._timer.start()
        self._updateButtons()

    def onCancelButton(self):
        self.cancelRun("Cancelled.")

    def cancelRun(self, reason):
        """Stop a running job now (its process and temporary files go) and report it with ``reason``."""
        job = self._job
        # not while the result is imported (the poll under way finishes it); at once when it had ended already
        if job is not None and (job.cancel(reason) or job.state not in ("running", "importing")):
            self.onPoll()

    def onExportSurfacesButton(self):
        segmentation = self._parameterNode.outputSegmentation
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Folder for the STL surfaces")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("The surfaces could not be exported.", waitCursor=True):
            try:
                written = self.logic.exportSurfaces(segmentation, folder)
            except FileExistsError as exc:
                if not slicer.util.confirmOkCancelDisplay(f"{exc}\nReplace the existing files?"):
                    return
                written = self.logic.exportSurfaces(segmentation, folder, overwrite=True)
            self._setStatus(f"Wrote {len(written)} closed surfaces (STL, LPS mm) to {folder}.")

    def onPoll(self):
        job = self._job
        if job is None:
            return
        self._timer.stop()  # no second poll from a nested event loop while this one imports the result
        finished = False
        try:
            finished = job.poll()
        finally:  # a failing callback must not stop the polling for good
            if not finished and self._job is job:
                self._timer.start()
        if not finished or self._job is not job:
            return
        self._job = None
        self._updateButtons()
        self._setStatus(job.statusText())  # with the run's warnings, e.g. "unverified model"
        if job.warnings or job.state == "failed":
            self.ui.logCollapsibleButton.collapsed = False
        if job.state == "done":
            if self._parameterNode and self._parameterNode.outputSegmentation is not job.segmentationNode:
                self._parameterNode.outputSegmentation = job.segmentationNode
            slicer.util.setSliceViewerLayers(background=job.volumeNode)
        elif job.state == "failed":
            slicer.util.errorDisplay(job.error or "Segmentation failed.")

    def _onProgress(self, fraction, text):
        if self._job is not None and self._job.state == "importing":  # too late to cancel
            self.ui.cancelButton.enabled = False
        self.ui.progressBar.value = int(round(100 * fraction))
        self._setStatus(text)

    def _log(self, line):
        self.ui.logTextEdit.appendPlainText(line)
        logging.info(line)

    def _setStatus(self, text):
        self.ui.statusLabel.text = text


#
# Test (Slicer self-test: segments the installed sample CT with the installed default model)
#
class KidneyTumorSegTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_KidneyTumorSeg_sample()

    def test_KidneyTumorSeg_sample(self):
        logic = KidneyTumorSegLogic()
        try:
            path = logic.checkSelfTestInputs()
        except SegmentationError as exc:  # an extension without its model or sample is broken: fail, not skip
            self.fail(str(exc))
        volume = slicer.util.loadVolume(path)
        self.assertEqual(logic.missingDependencies(), [])
        segmentation = logic.segment(volume, model="default", device="auto", mode="fast", computeMeasurements=True)
        allowed = {"Left kidney", "Right kidney", "Kidney", "Left kidney tumor", "Right kidney tumor",
                   "Kidney tumor", "Left kidney cyst", "Right kidney cyst", "Kidney cyst"}
        seg = segmentation.GetSegmentation()
        names = [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]
        self.assertTrue(set(names) <= allowed, names)
        kidneys = [n for n in names if n.endswith("idney")]
        self.assertEqual(sorted(kidneys), ["Left kidney", "Right kidney"], names)  # the sample has both
        for name, millilitres in self._volumesMl(segmentation, volume).items():
            low, high = (30.0, 600.0) if name in kidneys else (0.0, 2000.0)  # adult kidney ~100-250 mL
            self.assertTrue(low <= millilitres <= high, f"{name}: {millilitres:.1f} mL")
        table = logic.job.tableNode  # the command line's measurements: a row per kidney at least
        self.assertIsNotNone(table)
        self.assertGreaterEqual(table.GetNumberOfRows(), 2)
        self.delayDisplay("Test passed")

    @staticmethod
    def _volumesMl(segmentationNode, volumeNode):
        ids = vtk.vtkStringArray()
        seg = segmentationNode.GetSegmentation()
        for i in range(seg.GetNumberOfSegments()):
            ids.InsertNextValue(seg.GetNthSegmentID(i))
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentationNode, ids, labelmap,
                                                                              volumeNode)
        counts = slicer.util.arrayFromVolume(labelmap).ravel()
        voxelMl = labelmap.GetSpacing()[0] * labelmap.GetSpacing()[1] * labelmap.GetSpacing()[2] / 1000.0
        result = {seg.GetNthSegment(i).GetName(): float((counts == i + 1).sum()) * voxelMl
                  for i in range(seg.GetNumberOfSegments())}
        slicer.mrmlScene.RemoveNode(labelmap)
        return result
