"""Command-line interface. Each ``cmd_*.py`` module in this package adds one subcommand; the
analysis commands (``extract``, ``probe``, ``steer``, ``introspect``, ``patch``, ``heads``,
``align``, ``elicit``) build a spec from their flags and run it, with defaults taken from the
stages' options. Flags shared by several commands are defined once, in ``common.py`` (one
meaning per flag); ``running.py`` builds and runs the spec."""
