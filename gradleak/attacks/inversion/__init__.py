"""Image reconstruction from an observed update."""

from .invert import GradientMatcher, InversionConfig, Reconstruction, invert
from .objectives import OBJECTIVES
from .presets import PRESETS, preset
from .regularizers import REGULARIZERS

__all__ = ["GradientMatcher", "InversionConfig", "OBJECTIVES", "PRESETS", "REGULARIZERS", "Reconstruction", "invert", "preset"]
