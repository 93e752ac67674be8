"""Deprecated import path: use ``emoscope.elicit.modes_stage`` (renamed in issue 23; this module goes in the next release)."""

from emoscope.elicit.modes_stage import *  # noqa: F403
from emoscope.elicit.modes_stage import __all__  # noqa: F401
