"""Deprecated import path: use ``emoscope.models.shape`` (renamed in issue 23; this module goes in the next release)."""

from emoscope.models.shape import *  # noqa: F403
from emoscope.models.shape import __all__  # noqa: F401
