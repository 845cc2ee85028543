"""Transfer between domains and the guard against negative transfer.

    methods.py  MMD, CORAL, density-ratio instance weights, L2-SP, freezing the shared parameters, joint tasks
    guard.py    TransferConfig, transfer(method="auto") and few_shot (the guard), validation metrics, reports
"""

from .guard import (
    CANDIDATES,
    DISTANCES,
    METHODS,
    MODEL_MODES,
    REPORT_FILE,
    TransferConfig,
    TransferResult,
    few_shot,
    save_transfer_report,
    transfer,
    validation_metrics,
)
from .methods import (
    coral,
    domain_weights,
    freeze_shared,
    l2sp_penalty,
    mmd,
    retarget_slots,
    shared_parameter_names,
)

__all__ = [
    "CANDIDATES",
    "DISTANCES",
    "METHODS",
    "MODEL_MODES",
    "REPORT_FILE",
    "TransferConfig",
    "TransferResult",
    "coral",
    "domain_weights",
    "few_shot",
    "freeze_shared",
    "l2sp_penalty",
    "mmd",
    "retarget_slots",
    "save_transfer_report",
    "shared_parameter_names",
    "transfer",
    "validation_metrics",
]
