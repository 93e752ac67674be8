"""Deprecated import path: use ``emoscope.vectors.strength`` (renamed in issue 23; this module goes in the next release). ``units`` now means executor work units (``emoscope.core.executor``) in the packages that have them; ``vectors`` has none, so this name re-exports the strength unit."""

from emoscope.vectors.strength import *  # noqa: F403
from emoscope.vectors.strength import __all__  # noqa: F401
