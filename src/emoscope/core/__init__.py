"""The shared layer below every analysis package: statistics, random directions, the figure
saver, the stage protocol and the run-directory format.

Nothing here loads a model or imports an analysis package; analysis packages use these pieces
and never re-implement them (import-linter checks the direction, see ``pyproject.toml``).
"""
