"""Ingest: find the page files of the inputs, identify and register them, load pages."""
