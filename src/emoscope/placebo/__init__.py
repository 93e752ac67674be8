"""The placebo stage: how often the whole pipeline ships a decoy (``emoscope placebo``).

See ``emoscope.core.decoys`` for what a decoy is and how each stage judges one; this package
holds the stage that gathers the decoy tables of a run into ship rates.
"""

__all__: list[str] = []
