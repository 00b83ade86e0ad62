"""Core: the error family, files under cache/ written whole, where they live, the run's lock."""
