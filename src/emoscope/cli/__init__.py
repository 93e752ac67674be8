"""Command-line interface. Each ``cmd_*.py`` module in this package adds one subcommand; the
analysis commands (``extract``, ``probe``, ``steer``, ``introspect``) build a one-stage spec
with ``_stage_cmd.py`` and run it, with flags and defaults taken from the stage's options."""
