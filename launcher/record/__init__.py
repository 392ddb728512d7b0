"""A run's record: its run directory, how it ended, and the outputs brought back into it."""
