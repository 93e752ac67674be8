"""Deprecated import path: use ``emoscope.heads.units`` (renamed in issue 23; this module goes in the next release)."""

from emoscope.heads.units import *  # noqa: F403
from emoscope.heads.units import __all__  # noqa: F401
