"""Continual anomaly detectors: ``autoencoder`` (dense) and ``sequence-autoencoder`` (1-D conv, for windows).

Both learn a drifting "normal" without labels (reconstruction loss), score samples by their
reconstruction error in standardised feature space, and carry an anomaly threshold recalibrated
at every boundary (quantile for a target false-alarm rate, or SPOT for a target risk), with an
optional contamination filter. See :mod:`lifelong_anomaly.detector`.
"""

from lifelong import hookimpl
from lifelong_anomaly.autoencoder import Autoencoder, AutoencoderOptions
from lifelong_anomaly.sequence import SequenceAutoencoder, SequenceOptions

__version__ = "0.1.0"


@hookimpl
def register_models(register):
    register(
        "autoencoder",
        Autoencoder,
        options=AutoencoderOptions,
        help="anomaly detector: dense autoencoder over flat features; score = reconstruction error in standardised space",
    )
    register(
        "sequence-autoencoder",
        SequenceAutoencoder,
        options=SequenceOptions,
        help="anomaly detector for time-series windows (window, channels): 1-D conv autoencoder; score = reconstruction error",
    )
