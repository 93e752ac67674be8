"""Deprecated import path: use ``emoscope.probing.probe_report`` (renamed in issue 23; this module goes in the next release)."""

from emoscope.probing.probe_report import *  # noqa: F403
from emoscope.probing.probe_report import __all__  # noqa: F401
