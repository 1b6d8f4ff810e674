"""Outputs: where a page's files go, atomic writes, ALTO and plain text."""
