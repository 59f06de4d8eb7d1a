"""The Slicer layer below the module's GUI: MRML nodes in, the command line out of process, results back.

A package, not files beside ``KidneyTumorSeg.py``: Slicer loads every ``.py`` at the top of a module path as a
module. Imports only ``slicer``, ``vtk`` and the standard library at import time (the core, lazily), so the
module loads before torch is installed and everything here runs with slicer-core, without the application.

- ``logic``: ``KidneyTumorSegMRMLLogic`` (the module's ``KidneyTumorSegLogic`` adds the parameter node to it)
- ``job``: ``SegmentationJob``, one run of the command line, polled from a timer, cancelled on scene close
- ``segmentationNodes``: label map -> segmentation node; closed surfaces -> STL files
- ``measurementNodes``: the command line's measurement files -> table node and diameter lines
"""
