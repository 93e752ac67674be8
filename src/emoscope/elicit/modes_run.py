"""Deprecated import path: use ``emoscope.elicit.mode_comparison`` (renamed in issue 23; this module goes in the next release)."""

from emoscope.elicit.mode_comparison import *  # noqa: F403
from emoscope.elicit.mode_comparison import __all__  # noqa: F401
