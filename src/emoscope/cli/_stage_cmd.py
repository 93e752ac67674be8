"""Deprecated: the shared CLI module is now ``emoscope.cli.common`` (flags) and
``emoscope.cli.running`` (spec building and running). This module re-exports both for one release."""

from __future__ import annotations

from emoscope.cli.common import *  # noqa: F403
from emoscope.cli.common import __all__ as _common_all
from emoscope.cli.running import *  # noqa: F403
from emoscope.cli.running import __all__ as _running_all

__all__ = [*_common_all, *_running_all]
