"""The ``mlflow`` tracker: one MLflow run per pipeline run, every generation a registered model version;
and the commands that manage and serve those versions: ``lifelong models`` and ``lifelong serve``.

Options (``[tracking.mlflow]``): ``tracking_uri``, ``experiment``, ``registered_model``, ``run_name``,
``alias``, ``flush_seconds``, ``max_pending_generations``, ``on_unreachable``, ``preflight_seconds``,
``drain_seconds``, ``outbox``, ``pip_requirements`` (see :class:`lifelong_mlflow.options.MLflowOptions`).
What it records and how is described in :mod:`lifelong_mlflow.tracker`; how a generation is served
in :mod:`lifelong_mlflow.pyfunc`.
"""

import importlib.util

from lifelong import hookimpl
from lifelong_mlflow.options import MLflowOptions

__version__ = "0.1.0"

# MLflow takes ~2 s to import, so it is imported only when a run uses the tracker; checking that it
# is installed here still lets the plugin host list this plugin as unavailable, with a hint, if not.
if importlib.util.find_spec("mlflow") is None:
    raise ModuleNotFoundError("No module named 'mlflow'", name="mlflow")


def mlflow_tracker(options: MLflowOptions):
    from lifelong_mlflow.tracker import MLflowTracker

    return MLflowTracker(options)


@hookimpl
def register_commands(register):
    # click only at import; each command imports MLflow, torch and the web stack when it runs.
    from lifelong_mlflow.models_command import models
    from lifelong_mlflow.serve_command import serve

    register(models)
    register(serve)


@hookimpl
def register_trackers(register):
    register(
        "mlflow",
        mlflow_tracker,
        options=MLflowOptions,
        help="log the run to MLflow and register every generation as a model version",
    )
