"""What a Slicer run raises; the message says what happened and, where possible, what to do."""


class SegmentationError(RuntimeError):
    """A run that failed, or could not start."""


class SegmentationCancelled(SegmentationError):
    """The run was cancelled (by the user, a closed scene or a removed node); no output node was changed."""
