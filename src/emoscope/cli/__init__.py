"""Command-line interface. Each ``cmd_*.py`` module in this package adds one subcommand."""
