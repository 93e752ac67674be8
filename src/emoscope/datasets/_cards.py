"""Deprecated import path: use ``emoscope.datasets.cards`` (made public in issue 23: other packages
write and read cards; this module goes in the next release). ``python -m emoscope.datasets._cards``
still runs the card tool."""

from emoscope.datasets.cards import *  # noqa: F403
from emoscope.datasets.cards import __all__, main  # noqa: F401

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
