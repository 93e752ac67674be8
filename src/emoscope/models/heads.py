"""Deprecated import path: use ``emoscope.models.head_outputs`` (renamed in issue 23; this module goes in the next release)."""

from emoscope.models.head_outputs import *  # noqa: F403
from emoscope.models.head_outputs import __all__  # noqa: F401
