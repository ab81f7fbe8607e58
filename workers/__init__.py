"""The distributed shell of splice-monitor: Ray actors wrapping core objects, sources, the pipeline driver."""
