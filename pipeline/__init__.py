"""anandasky-batch: batch text recognition of archive collections with the AnandaSky model."""

__version__ = "0.1.0"
SOFTWARE_NAME = "anandasky-batch"
