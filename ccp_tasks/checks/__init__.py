"""The check stages: Dockerfile lint, structure tests, integration tests, pod runs, their records."""
