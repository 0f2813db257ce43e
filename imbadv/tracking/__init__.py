"""MLflow I/O: the store, run names and tags, provenance, run lifecycle, the model registry, results."""
