"""Packaged data: the Micius 2017 pass tables."""
