"""Runner: a run over a collection: settings, devices, workers, scheduling, progress."""
