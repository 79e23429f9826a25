"""Tests of the command line (mechcheck/cli.py, commands.py): hostile input, exit codes, locks, dispatch."""
