"""Analyse: run the inference engine on a case and build, store and queue its result objects."""
