"""The models-from-code file MLflow stores with every generation and runs when loading it.

Saving the model as code rather than as a pickled ``PythonModel`` instance means loading a
generation never unpickles anything; the weights themselves are safetensors.
"""

from mlflow.models import set_model

from lifelong_mlflow.pyfunc import GenerationModel

set_model(GenerationModel())
