"""Deprecated import path: use ``emoscope.cli.common`` (the shared flag groups) and
``emoscope.cli.running`` (spec building and running). This module re-exports both for one
release; no module of the package imports it."""

from __future__ import annotations

from emoscope.cli.common import *  # noqa: F403
from emoscope.cli.common import __all__ as _common_all
from emoscope.cli.running import *  # noqa: F403
from emoscope.cli.running import __all__ as _running_all

__all__ = [*_common_all, *_running_all]
