"""Models trained from scratch: ``mlp`` and ``cnn``, each with one head or one head per task."""

from lifelong import hookimpl
from lifelong_models.cnn import CNN, CNNOptions
from lifelong_models.mlp import MLP, MLPOptions

__version__ = "0.1.0"


@hookimpl
def register_models(register):
    register("mlp", MLP, options=MLPOptions, help="multilayer perceptron over flattened inputs")
    register("cnn", CNN, options=CNNOptions, help="small CNN (conv-BN-ReLU-pool blocks, global pooling)")
