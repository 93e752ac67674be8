"""Deprecated import path: use ``emoscope.steering.strength`` (renamed in issue 23; this module goes in the next release). ``units`` now means executor work units (``emoscope.core.executor``) in the packages that have them; ``steering`` has none, so this name re-exports the strength helpers."""

from emoscope.steering.strength import *  # noqa: F403
from emoscope.steering.strength import __all__  # noqa: F401
