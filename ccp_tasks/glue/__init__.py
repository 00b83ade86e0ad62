"""The doit glue: task generators, actions, the reporter, loading the pipeline, watch mode."""
