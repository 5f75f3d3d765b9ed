"""Networked nodes: the satellite and the ground stations as processes over TCP."""
