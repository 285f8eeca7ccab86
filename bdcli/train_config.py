"""The training loop's settings (``TrainConfig``), in a module that imports no torch: the CLI generates
its options from this dataclass and recipes build it, so ``bdcli --help`` or a recipe's ``--dry-run``
need not pay the import of torch. ``bdcli.engine.loop`` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .errors import UsageError

SCHEDULES = ("linear", "constant")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every procedure that trains (AdamW, the papers' defaults)."""

    lr: float = 2e-5
    epochs: float = 3.0
    max_steps: int | None = None  # when set, overrides epochs
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.0
    schedule: str = "linear"
    grad_clip: float | None = 1.0
    max_length: int = 128
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    # Save a resumable checkpoint every this many steps (0: never). It changes no result, so it is not
    # part of an output's fingerprint.
    checkpoint_every: int = 200
    # Maximum entropy as a regulariser of cross-entropy (the maximum-entropy paper's de-biasing use,
    # section 5.6): loss = CE - alpha * H(q). 0 turns it off.
    entropy_alpha: float = 0.0
    # Record representation geometry, ACC and ASR on fixed probes every this many steps (0: off);
    # the command attaches the recorder (bdcli/probe/dynamics.py) through engine.loop.EXTRA_HOOKS.
    record_dynamics: int = 0

    def __post_init__(self) -> None:
        if self.record_dynamics < 0:
            raise UsageError(f"--record-dynamics must be >= 0 steps, got {self.record_dynamics}")
        if self.entropy_alpha < 0:
            raise UsageError(f"entropy alpha must be >= 0, got {self.entropy_alpha}")
        if self.checkpoint_every < 0:
            raise UsageError(f"checkpoint interval must be >= 0, got {self.checkpoint_every}")
        if self.lr <= 0:
            raise UsageError(f"learning rate must be positive, got {self.lr}")
        if self.epochs <= 0 and not self.max_steps:
            raise UsageError(f"epochs must be positive, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"max steps must be at least 1, got {self.max_steps}")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0 <= self.warmup_ratio < 1:
            raise UsageError(f"warmup ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if self.max_length < 8:
            raise UsageError(f"max length must be at least 8 tokens, got {self.max_length}")

    @classmethod
    def take(cls, cfg: object, **overrides) -> "TrainConfig":
        """The TrainConfig fields of a larger config (an attack's or defense's), with overrides."""
        values = {f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)}
        values.update(overrides)
        return cls(**values)
