"""The engine boundary: the only code that talks to the Docker engine."""
