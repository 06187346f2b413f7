"""One module per source format, each with a `load_*` function returning a validated `Dataset`."""
