"""Training, evaluation and export of KidneyTumorSeg models (KiTS19/21/23 layouts and synthetic data).

The trainer, datasets, losses and evaluation arrive with the training issue; the package exists now so
that the installed layout is final and `import training` works from a fresh install.
"""
