"""Image reconstruction from an observed update."""

from .invert import GradientMatcher, InversionConfig, Reconstruction, invert
from .objectives import OBJECTIVES
from .presets import PRESETS, preset
from .regularizers import REGULARIZERS
from . import guidance  # noqa: F401,E402  (registers the "guidance" regulariser and guides)

__all__ = ["GradientMatcher", "InversionConfig", "OBJECTIVES", "PRESETS", "REGULARIZERS", "Reconstruction", "invert", "preset"]
