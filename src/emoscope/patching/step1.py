"""Deprecated import path: use ``emoscope.patching.next_token`` (renamed in issue 23; this module goes in the next release)."""

from emoscope.patching.next_token import *  # noqa: F403
from emoscope.patching.next_token import __all__  # noqa: F401
