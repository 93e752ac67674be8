"""Deprecated import path: use ``emoscope.core.decoys`` (renamed in issue 23; this module goes in the next release)."""

from emoscope.core.decoys import *  # noqa: F403
from emoscope.core.decoys import __all__  # noqa: F401
