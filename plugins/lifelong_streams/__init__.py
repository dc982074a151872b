"""Stream readers: benchmark streams from bundled data, and files (npz, csv) with dead letters."""

from lifelong import hookimpl
from lifelong_streams.benchmarks import PermutedOptions, SplitOptions
from lifelong_streams.digits import permuted_digits, split_digits

__version__ = "0.1.0"


@hookimpl
def register_readers(register):
    register("split-digits", split_digits, options=SplitOptions, help="scikit-learn digits split into experiences by class")
    register("permuted-digits", permuted_digits, options=PermutedOptions, help="scikit-learn digits under a fixed pixel permutation per experience")
