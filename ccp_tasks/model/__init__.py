"""The model: configuration, template repositories and rendering, the image graph, application sources."""
