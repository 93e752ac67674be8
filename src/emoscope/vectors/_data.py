"""Deprecated import path: use ``emoscope.core.arrays`` (moved to the shared layer in issue 23; this
module goes in the next release)."""

from emoscope.core.arrays import *  # noqa: F403
from emoscope.core.arrays import __all__  # noqa: F401
