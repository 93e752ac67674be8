"""Deprecated import path: use ``emoscope.models.units`` (renamed in issue 23; this module goes in the next release)."""

from emoscope.models.units import *  # noqa: F403
from emoscope.models.units import __all__  # noqa: F401
