"""nfit: media files to neural fields, and back.

    import nfit
    nf = nfit.fit("photo.png", steps=300)
    nf.save("photo.nf")
    nfit.render_to_file(nfit.load("photo.nf"), "big.png", res=1024)
"""

from nfit._version import __version__
from nfit.api import evaluate, fit, fit_files, fit_signals, info, load, meta_train, render, render_to_file, save
from nfit.config import AdaptConfig, AlgoOptions, DataConfig, FieldOptions, FitConfig, RenderConfig, TrainConfig
from nfit.errors import ConfigError, FieldFileError, InputError, NfitError, OutputError, TrainingError
from nfit.fieldfile import MetaInit, NeuralField
from nfit.runs import load_init
from nfit.signals import Signal, read_signal

__all__ = [
    "AdaptConfig",
    "AlgoOptions",
    "DataConfig",
    "MetaInit",
    "TrainConfig",
    "evaluate",
    "load_init",
    "meta_train",
    "ConfigError",
    "FieldFileError",
    "FieldOptions",
    "FitConfig",
    "InputError",
    "NeuralField",
    "NfitError",
    "OutputError",
    "RenderConfig",
    "Signal",
    "TrainingError",
    "__version__",
    "fit",
    "fit_files",
    "fit_signals",
    "info",
    "load",
    "read_signal",
    "render",
    "render_to_file",
    "save",
]
