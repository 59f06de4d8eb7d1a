"""Segmentation nodes: a KiTS label map (the command line's file) as segments on the volume's exact grid, and
closed surfaces written as files by Slicer's own closed-surface representation (binary labelmap -> closed
surface with the segmentation's conversion and smoothing parameters), in LPS, as Slicer's "Export to files"
does. Imports only ``slicer``, ``vtk``, the standard library and, lazily, the core.

Surface files appear whole or not at all: Slicer writes into a staging folder inside the destination, and
each file is then renamed into place (the same file system, so an atomic rename), as the core's writers do.
"""
import os
import shutil
import tempfile

import slicer
import vtk

from .errors import SegmentationError


def ensureConverterRules():
    """Slicer's Segmentations module registers these at startup; plain MRML (slicer-core, PythonSlicer
    scripts without the app) lacks them, and then no binary labelmap or surface can be created."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    try:
        names = {rule.GetClassName() for rule in factory.GetConverterRules()}
    except (AttributeError, TypeError):  # a VTK that cannot wrap the rules' std::vector (older Slicer builds)
        if hasattr(slicer, "app"):
            return  # the application registered them at startup
        names = set()
    if "vtkBinaryLabelmapToClosedSurfaceConversionRule" not in names:
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    if "vtkClosedSurfaceToBinaryLabelmapConversionRule" not in names:
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


LABELMAP_REPRESENTATION = "Binary labelmap"


MEASURE_MIDLINE = "measure"  # importLabelmap's default: the body's midline measured on the reference volume


def importLabelmap(labelmap, geometry=None, segmentationNode=None, referenceVolumeNode=None, confidence=None,
                   midlineX=MEASURE_MIDLINE, unsureBelow=None):
    """Read a KiTS label map (file path, or (z, y, x) array + Geometry) into a segmentation node.

    One segment per structure and side, named, colored and tagged with its terminology and, given the
    cascade's ``confidence`` map (path or array), its confidence (``KidneyTumorSeg.Confidence`` and a
    ``Description`` listing each lesion's volume and confidence, "(uncertain)" below ``unsureBelow``). The
    segments are built in a temporary segmentation and copied into ``segmentationNode`` only when complete,
    so a failure leaves an existing node as it was; a new node "<volume> kidneys" is made when None. With
    ``referenceVolumeNode`` the map must lie on its voxel grid, and the segments take its exact matrix and its
    parent transform. Left and right (``postprocessing.kidney_components``): ``midlineX`` is the body's midline
    the command line named its own files of this case by (its ``case_done`` event; None: it knew none), or by
    default measured on ``referenceVolumeNode`` (without one: none).
    """
    from KidneyTumorSegLib.image_io import read_labelmap
    from KidneyTumorSegLib.segments import segments_from_labels
    ensureConverterRules()
    if isinstance(labelmap, (str, os.PathLike)):
        image = read_labelmap(labelmap)
        labels, geometry = image.array, image.geometry
    else:
        labels = labelmap
        if geometry is None or not hasattr(labels, "shape"):
            raise ValueError("Pass a label map file, or a (z, y, x) numpy array and its Geometry.")
    toWorld = labelmapToWorld(labels, geometry, referenceVolumeNode)
    midline = None if midlineX == MEASURE_MIDLINE else midlineX
    if midlineX == MEASURE_MIDLINE and referenceVolumeNode is not None:
        from KidneyTumorSegLib.postprocessing import body_midline_x
        midline = body_midline_x(slicer.util.arrayFromVolume(referenceVolumeNode), geometry)
    segMap, infos = segments_from_labels(labels, geometry, midline_x=midline)
    tags = {}
    if confidence is not None:
        from KidneyTumorSegLib.confidence import segment_confidences
        conf = read_labelmap(confidence).array if isinstance(confidence, (str, os.PathLike)) else confidence
        tags = segment_confidences(segMap, infos, conf, geometry, unsure_below=unsureBelow)
    return replaceSegments(segmentationFromMap(segMap, infos, toWorld, tags), segmentationNode, referenceVolumeNode)


def labelmapToWorld(labels, geometry, referenceVolumeNode=None):
    """IJK-to-RAS of a label map (Geometry is LPS); the reference volume's own matrix, exactly, when the map
    lies on its grid (files round to float precision), and an error when it does not."""
    ras = geometry.affine()
    ras[:2] *= -1.0  # LPS -> RAS
    if referenceVolumeNode is not None:
        dims = referenceVolumeNode.GetImageData().GetDimensions()
        matrix = vtk.vtkMatrix4x4()
        referenceVolumeNode.GetIJKToRASMatrix(matrix)
        reference = [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]
        if tuple(labels.shape[::-1]) != tuple(dims) or abs(ras - reference).max() > 1e-3:
            raise SegmentationError("The label map does not lie on the reference volume's voxel grid.")
        ras = reference
    toWorld = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            toWorld.SetElement(r, c, float(ras[r][c]))
    return toWorld


def replaceSegments(segmentation, segmentationNode=None, referenceVolumeNode=None):
    """Put ``segmentation``'s segments into ``segmentationNode`` at once (a new node when None), in the
    reference volume's frame (its parent transform too); shown in 3D when the node has a display node."""
    if segmentationNode is None:
        name = f"{referenceVolumeNode.GetName()} kidneys" if referenceVolumeNode else "Kidneys"
        scene = referenceVolumeNode.GetScene() if referenceVolumeNode else slicer.mrmlScene
        segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentationNode.CreateDefaultDisplayNodes()
    wasModifying = segmentationNode.StartModify()
    try:
        segmentationNode.GetSegmentation().DeepCopy(segmentation)  # replaces the old segments at once
        if referenceVolumeNode is not None:
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
            segmentationNode.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
    finally:
        segmentationNode.EndModify(wasModifying)
    if segmentationNode.GetDisplayNode() is not None:
        segmentationNode.CreateClosedSurfaceRepresentation()  # 3D display
    return segmentationNode


def segmentationFromMap(segMap, infos, toWorld, tags=None):
    """A vtkSegmentation with one segment per ``infos`` entry (``segments.segments_from_labels``), all
    sharing one labelmap layer (``segMap``, (z, y, x) uint8) placed by ``toWorld`` (IJK-to-RAS vtkMatrix4x4):
    named, colored, tagged with terminology, KiTS label and the ``tags`` given per segment id."""
    from vtk.util import numpy_support
    oriented = slicer.vtkOrientedImageData()
    oriented.SetDimensions(*segMap.shape[::-1])
    oriented.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(oriented.GetPointData().GetScalars())[:] = segMap.ravel()
    oriented.SetImageToWorldMatrix(toWorld)
    segmentation = slicer.vtkSegmentation()
    segmentation.SetSourceRepresentationName(LABELMAP_REPRESENTATION)
    for info in infos:
        segment = slicer.vtkSegment()
        segment.SetName(info.name)
        segment.SetNameAutoGenerated(False)
        segment.SetColor(*info.color)
        segment.SetColorAutoGenerated(False)
        segment.SetLabelValue(info.value)
        segment.SetTag("TerminologyEntry", info.terminology)
        segment.SetTag("KidneyTumorSeg.Label", str(int(info.label)))  # KiTS value, for export/measures
        for key, value in (tags or {}).get(info.id, {}).items():
            segment.SetTag(key, value)
        segment.AddRepresentation(LABELMAP_REPRESENTATION, oriented)
        segmentation.AddSegment(segment, info.id)
    return segmentation


def exportSurfaces(segmentationNode, folder, segmentIds=None, overwrite=False, fileFormat="STL"):
    """Write each segment's closed surface to ``folder`` (created when missing) as
    ``<segmentation name>_<segment name>.stl`` (LPS millimetres); returns the written paths.
    Refuses (FileExistsError, nothing written) to replace a file unless ``overwrite``."""
    segmentation = segmentationNode.GetSegmentation() if segmentationNode is not None else None
    if segmentation is None or segmentation.GetNumberOfSegments() == 0:
        raise ValueError("Select a segmentation with segments to export.")
    ensureConverterRules()
    os.makedirs(folder, exist_ok=True)
    ids = vtk.vtkStringArray()
    for segmentId in segmentIds or [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]:
        ids.InsertNextValue(segmentId)
    staging = tempfile.mkdtemp(prefix=".surfaces-", dir=folder)
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsClosedSurfaceRepresentationToFiles(
                staging, segmentationNode, ids, fileFormat, True, 1.0, False):
            raise RuntimeError(f"Slicer could not export the surfaces of '{segmentationNode.GetName()}'.")
        names = sorted(os.listdir(staging))
        existing = [n for n in names if os.path.exists(os.path.join(folder, n))]
        if existing and not overwrite:
            raise FileExistsError(f"{os.path.join(folder, existing[0])} already exists; choose another folder "
                                  "or allow replacing the files.")
        written = []
        for name in names:
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
            written.append(os.path.join(folder, name))
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
