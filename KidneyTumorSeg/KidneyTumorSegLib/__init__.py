"""KidneyTumorSegLib: the pure core of KidneyTumorSeg (numpy, SimpleITK, scipy, torch; no Slicer)."""

__version__ = "0.1.0"
