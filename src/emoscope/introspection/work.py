"""Deprecated import path: use ``emoscope.introspection.units`` (renamed in issue 23; this module goes in the next release)."""

from emoscope.introspection.units import *  # noqa: F403
from emoscope.introspection.units import __all__  # noqa: F401
