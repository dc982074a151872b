"""``lifelong serve``: a scoring service that follows a registered model alias.

One concept per module:

- :mod:`~lifelong_mlflow.serving.scorer`: a generation rebuilt for inference (also what the
  ``mlflow.pyfunc`` model uses), with its forward pass and smoke test;
- :mod:`~lifelong_mlflow.serving.source`: where versions come from: a ``models:/`` URI resolved
  through an ``MlflowClient`` and a version's two files fetched and loaded;
- :mod:`~lifelong_mlflow.serving.batcher`: dynamic micro-batching of concurrent requests;
- :mod:`~lifelong_mlflow.serving.metrics`: the Prometheus metrics;
- :mod:`~lifelong_mlflow.serving.app`: the FastAPI app, the served version and the hot reload.

Importing this package imports nothing heavy: the web stack is imported by ``app`` only.
"""
