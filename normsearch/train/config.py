"""How one candidate is trained: the recipe's `train:` section. A module of its own so that the recipe
(which imports it) does not pull in the training loop."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from normsearch.data.pipeline import AugmentConfig


class TrainConfig(BaseModel):
    """How one candidate is trained (defaults: benchmark-design §8)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=128, ge=2)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(default=1e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(default=0.5, ge=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    augment: AugmentConfig = AugmentConfig()
    # Where training starts; None: `weights` when backbone.weights is set, else `scratch`.
    init: Literal["scratch", "weights", "pretrain"] | None = None
    init_from: str | None = None  # init: pretrain: a checkpoint from `pretrain` instead of pretraining
    pretrain_epochs: int | None = Field(default=None, ge=1)  # the base's pretraining budget (None: epochs)
    pretrain_lr: float | None = Field(default=None, gt=0)  # (None: lr)
    sn_init: Literal["equal", "bn"] = "equal"  # inherited SwitchNorm ratios: equal, or toward BN
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    cudnn_benchmark: bool = True

    @model_validator(mode="after")
    def _init_from_is_for_pretrain(self) -> TrainConfig:
        if self.init_from is not None and self.init != "pretrain":
            raise ValueError(
                "init_from is the pretrained checkpoint of init: pretrain; to start from a file with "
                "init: weights, give it as model.backbone.weights"
            )
        return self
