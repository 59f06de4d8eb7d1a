"""Measurements of a KiTS label map as MRML nodes: a table (one row per kidney, lesion and uncertain lesion)
and one markups line per lesion along its longest 3D diameter. Imports only ``slicer``, ``vtk`` and, lazily, the core."""
import slicer
import vtk

LPS_TO_RAS = (-1.0, -1.0, 1.0)


def measure_file(labelmapPath, confidencePath=None, uncertain=()):
    """Measurements (``KidneyTumorSegLib.measurements.Measurements``) of a label map file; with the CLI's
    confidence map each lesion gets its confidence, and ``uncertain`` (the CLI's uncertain lesions, as JSON
    dicts) are listed."""
    from KidneyTumorSegLib.confidence import UncertainLesion
    from KidneyTumorSegLib.image_io import read_labelmap
    from KidneyTumorSegLib.measurements import measure
    image = read_labelmap(labelmapPath)
    confidence = None if confidencePath is None else read_labelmap(confidencePath).array
    measurements = measure(image.array, image.geometry, confidence=confidence)
    measurements.uncertain = [UncertainLesion.from_dict(u) for u in uncertain]
    return measurements


def measurements_to_table(measurements, name="Kidney measurements", tableNode=None):
    """Fill (or create) a table node: the CSV rows of the measurements, all as strings."""
    from KidneyTumorSegLib.measurements import csv_rows
    rows = csv_rows(measurements)
    if tableNode is None:
        tableNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = tableNode.GetTable()
    table.Initialize()
    keys = list(dict.fromkeys(k for row in rows for k in row)) or ["id"]  # rows differ in their keys
    for key in keys:
        column = vtk.vtkStringArray()
        column.SetName(key)
        for row in rows:
            value = row.get(key)
            column.InsertNextValue("" if value is None else str(value))
        table.AddColumn(column)
    tableNode.Modified()
    return tableNode


def diameter_lines(measurements, prefix=""):
    """One markups line node per lesion along its longest 3D diameter (LPS end points shown in RAS)."""
    nodes = []
    for lesion in measurements.lesions:
        ends = lesion.lines.get("longest")
        if not ends:
            continue
        node = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLMarkupsLineNode", f"{prefix}{lesion.id} longest diameter".strip())
        for point in ends:
            node.AddControlPoint(vtk.vtkVector3d(*[c * s for c, s in zip(point, LPS_TO_RAS)]))
        node.SetAttribute("KidneyTumorSeg.LesionId", str(lesion.id))
        nodes.append(node)
    return nodes
