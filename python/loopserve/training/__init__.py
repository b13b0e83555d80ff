"""Training, export and evaluation gates for the closed loop.

    from loopserve.training import load_train_config, train, evaluate_gates, GateConfig
    result = train(load_train_config("configs/train_fraud.yaml"))   # also under torchrun (DDP)
    report = evaluate_gates(result.model_dir, holdout, GateConfig(min_auc=0.8), production_model_dir="prod/fraud")

`loopserve train CONFIG [--nproc N]` is the command line.
"""

from loopserve.training.config import (DataSpec, ExportSpec, GateConfig, GeneratorSpec, ModelSpec, OutputSpec,
                                       RegistrySpec, TrackingSpec, TrainConfig, load_train_config)
from loopserve.training.export import ExportMismatch, Signature
from loopserve.training.gates import GateError, GateReport, GateResult, evaluate_gates
from loopserve.training.metrics import accuracy, roc_auc
from loopserve.training.train import TrainResult, train

__all__ = ["DataSpec", "ExportMismatch", "ExportSpec", "GateConfig", "GateError", "GateReport", "GateResult",
           "GeneratorSpec", "ModelSpec", "OutputSpec", "RegistrySpec", "Signature", "TrackingSpec", "TrainConfig",
           "TrainResult", "accuracy", "evaluate_gates", "load_train_config", "roc_auc", "train"]
