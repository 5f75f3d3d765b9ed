"""Subcommands of the mozi CLI, one module each."""
