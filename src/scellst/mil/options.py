"""The training settings of the MIL model and their defaults: the one place both read.

:func:`~scellst.tl.fit` takes its keyword defaults from :data:`DEFAULTS`, and
:func:`training_options` completes and checks the settings that the trainer
(:func:`scellst.mil.training.fit_slides`) and :func:`~scellst.tl.leave_one_slide_out` pass on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

LOSSES = ("mse", "nb", "poisson")
SCALINGS = ("global", "slide", "none")
BLENDS = ("auto", "mlp", "ridge")


@dataclass(frozen=True)
class TrainingOptions:
    """Defaults of the training settings (documented in :func:`scellst.tl.fit`)."""

    loss: str = "mse"
    aggregation: str = "mean"
    aggregation_space: str = "linear"
    hidden: Sequence[int] = (256, 256, 256)
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 128
    max_epochs: int = 400
    patience: int = 20
    smoothing: float | None = None
    val_fraction: float = 0.2
    split: str = "spatial"
    scale_targets: bool | str = True
    members: int | None = None
    blend: str = "auto"
    slide_offsets: bool = True
    seed: int = 0
    device: str | None = None
    progress: bool = True


DEFAULTS = TrainingOptions()
#: The parameters of :func:`~scellst.tl.fit` that configure training (the others choose the data).
TRAINING_OPTIONS = tuple(f.name for f in fields(TrainingOptions))


def training_options(**given) -> dict:
    """Every training setting (:data:`TRAINING_OPTIONS`): those ``given``, the others at their
    defaults (:data:`DEFAULTS`); checked."""
    unknown = set(given) - set(TRAINING_OPTIONS)
    if unknown:
        raise TypeError(
            f"Unknown training settings {sorted(unknown)}; allowed: {sorted(TRAINING_OPTIONS)}."
        )
    options = {**asdict(DEFAULTS), **given}
    options["hidden"] = given.get("hidden", DEFAULTS.hidden)  # asdict would copy it as a list
    check_options(options)
    return options


def check_options(options: Mapping) -> None:
    """Raise ValueError for a training setting outside its allowed values."""
    if options["loss"] not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {options['loss']!r}")
    if options["aggregation"] not in ("mean", "sum"):
        raise ValueError(f"aggregation must be 'mean' or 'sum', got {options['aggregation']!r}")
    if options["aggregation_space"] not in ("log", "linear"):
        raise ValueError(
            f"aggregation_space must be 'log' or 'linear', got {options['aggregation_space']!r}"
        )
    if options["split"] not in ("spatial", "random"):
        raise ValueError(f"split must be 'spatial' or 'random', got {options['split']!r}")
    smoothing = options["smoothing"]
    if smoothing is not None and not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be None or in [0, 1), got {smoothing!r}")
    target_scaling(options["scale_targets"])
    if options["blend"] not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {options['blend']!r}")
    members = options["members"]
    if members is not None and (
        isinstance(members, bool) or int(members) != members or members < 1
    ):
        raise ValueError(f"members must be None (automatic) or an integer >= 1, got {members!r}")


def target_scaling(scale_targets: bool | str) -> str:
    """The target scaling named by ``scale_targets`` (``True`` is ``"global"``)."""
    if scale_targets is True:
        return "global"
    if scale_targets is False:
        return "none"
    if scale_targets not in SCALINGS:
        raise ValueError(
            f"scale_targets must be True, False or one of {SCALINGS}, got {scale_targets!r}"
        )
    return scale_targets
