"""`LearnerConfig`: how the learners train. Only pydantic here, so configs validate without torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hillclimb.config.losses import ConstantLambda, LossConfig

LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Every linear layer of a Llama-style decoder block, by the name its modules end in."""


class LoraConfig(BaseModel):
    """Low-rank adapters (LoRA): each targeted linear layer's weight W0 stays frozen and the
    learner trains W = W0 + (alpha / rank) · B · A, with A (rank × in) and B (out × rank, zero at
    the start, so training begins at the pretrained model). Only A and B get gradients and
    optimizer state, are synced to the policy engine (which merges them into its own copy of
    W0) and are checkpointed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(default=16, ge=1)
    """Inner dimension r of each adapter: trainable parameters per layer are r · (in + out)."""
    alpha: float = Field(default=32.0, gt=0)
    """Scale numerator: the adapter's product B · A is multiplied by alpha / rank."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on the adapters' input during training steps; 0 keeps the learner's log-probs
    equal to the policy engine's (which runs without dropout), as the importance ratio assumes."""
    target_modules: tuple[str, ...] | Literal["all-linear"] = LLAMA_PROJECTIONS
    """Which linear layers get adapters: module names or name suffixes (the default is every
    projection of a Llama-style block), or `all-linear` for every linear layer but the LM head.
    The LM head never carries one (the losses apply it themselves). A name the model lacks is
    an error that lists the ones it has."""


class LearnerConfig(BaseModel):
    """How the learners train."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(default=3e-3, gt=0)
    warmup_lr: float | None = Field(default=None, gt=0)
    """Learning rate of the behaviour-cloning warm-up; None uses `lr`. Supervised steps tolerate
    a larger one than policy-gradient steps do."""
    lr_decay_fraction: float = Field(default=0.0, ge=0, le=1)
    """The last fraction of the run over which the RL learning rate falls linearly to zero
    (warmup-stable-decay); 0 keeps it constant. The trainer measures the run by steps, or by
    its time budget when that ends it first."""
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = Field(default=1.0, gt=0)
    """Global gradient-norm clip; None disables it."""
    anchor_coef: float = Field(default=1.0, ge=0)
    """Weight of the behaviour-cloning anchor in RL steps (see `train.anchor_batch`)."""
    micro_batch_tokens: int = Field(default=16384, ge=1)
    """Padded tokens per forward/backward; a step accumulates gradients over as many as it needs.
    A sample longer than this is a micro-batch of its own, `len(sample)` tokens at once (it is
    never cut: its attention spans it all); the learner logs a warning, once, the first time one
    comes. Sized for checkpointed blocks (`activation_checkpointing`): without them a 7B-class
    model keeps roughly 30 times the activations per token, so lower it there."""
    loss: LossConfig = LossConfig()
    echo_lambda: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """Shorthand for a constant ECHO λ (`--set learner.echo_lambda=0` is plain GRPO); it replaces
    `loss.echo.schedule`. None keeps the schedule."""
    num_learners: int = Field(default=1, ge=1)
    """Data-parallel ranks (Ray actors in one torch.distributed group)."""
    gpus_per_learner: float = Field(default=0.0, ge=0)
    """GPUs Ray reserves for each rank; a rank trains on the GPU Ray assigns it (with `device: cuda`).
    A whole number: a fraction would put two ranks on one GPU, where NCCL refuses to run."""
    cpus_per_learner: float = Field(default=0.0, ge=0)
    """CPUs Ray reserves for each rank."""
    resources_per_learner: dict[str, float] = Field(default_factory=dict)
    """Ray custom resources each rank asks for, to land on the nodes that offer them (a node role)."""
    placement: Literal["pack", "spread"] = "pack"
    """Where the ranks go when they reserve anything: `pack` onto as few nodes as hold them (the
    all-reduce stays on a node where it can), `spread` over as many nodes as there are ranks."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """`ddp` keeps a whole replica per rank; `fsdp` shards parameters, gradients and optimizer
    state over the ranks (CPU or CUDA), for a model one device cannot hold with its optimizer."""
    shard_group_size: int | None = Field(default=None, ge=1)
    """With `fsdp`: the ranks that shard one copy of the state among themselves (HSDP). Each group
    of this many ranks holds the whole model sharded over its members, the groups hold replicas
    and all-reduce gradients between them, so the all-gathers of every layer stay inside a group:
    set it to a node's GPUs and they stay on its NVLink, only one gradient all-reduce a step
    crossing nodes. None: one group of every rank (flat FSDP); it must divide `num_learners`."""
    device: str = "cpu"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """What the learner computes in. The weights it trains and their optimizer state are always
    fp32 (master weights, whatever `policy.model.dtype` the policy engines serve in: a bf16 weight
    cannot take an update below 1/256 of itself); `bf16` runs the matrix products in bf16
    (autocast on one rank or under DDP; under FSDP the gathered parameters are bf16 and gradients
    reduce in fp32), on CUDA or CPU, and keeps LoRA's frozen base weights in bf16 (not under FSDP).
    `auto` is bf16 on CUDA and fp32 on CPU."""
    activation_checkpointing: bool | Literal["auto"] = "auto"
    """Keep only each decoder block's input for the backward pass and recompute the block's
    activations there: about a third more compute for a fraction of the activation memory.
    `auto` is on with CUDA and off on CPU (the tiny models there have memory to spare)."""
    collective_timeout_s: float = Field(default=600.0, gt=0)
    """How long a rank waits, in seconds, to meet the others and in any collective before it
    fails: one rank's crash ends the rest within this instead of hanging them forever. The
    meeting waits for the slowest rank to load its model, so allow for that (NCCL's own default
    is 600 s, gloo's 1,800 s)."""
    cpu_threads: int | None = Field(default=None, ge=1)
    """torch threads per learner on CPU; None keeps torch's default."""
    seed: int = 0
    lora: LoraConfig | None = None
    """Train low-rank adapters on the frozen model instead of every weight; None is full
    fine-tuning. With the KL penalty on, the reference is the model with its adapters switched
    off: the pretrained model, before any warm-up, which LoRA trains the adapters of too."""

    def lr_scale(self, progress: float) -> float:
        """The RL learning rate's factor at `progress` (0 at the start of the run, 1 at its end)."""
        if self.lr_decay_fraction == 0:
            return 1.0
        return min(1.0, max(0.0, (1.0 - progress) / self.lr_decay_fraction))

    @property
    def shards(self) -> int:
        """Over how many ranks one copy of the state is split (1: each rank holds it whole)."""
        if self.strategy != "fsdp":
            return 1
        return self.shard_group_size or self.num_learners

    @property
    def starts_on_meta(self) -> bool:
        """Whether the ranks build the model on `meta` and receive their shards from rank 0, the
        only one to read it (FSDP over several ranks: `trainers.meta_init`)."""
        return self.strategy == "fsdp" and self.num_learners > 1

    @property
    def bf16(self) -> bool:
        """Whether the learner computes in bf16 (`precision`, `auto` resolved for `device`)."""
        return self.precision == "bf16" or (self.precision == "auto" and self.device.startswith("cuda"))

    @property
    def checkpoints_activations(self) -> bool:
        """Whether decoder blocks recompute their activations (`activation_checkpointing` resolved)."""
        auto = self.activation_checkpointing == "auto"
        return self.device.startswith("cuda") if auto else bool(self.activation_checkpointing)

    @field_validator("gpus_per_learner")
    @classmethod
    def _whole_gpus(cls, gpus: float) -> float:
        if gpus != int(gpus):
            raise ValueError(
                f"{gpus:g} is a fraction of a GPU, which would put several ranks on one GPU (NCCL refuses "
                "to run so); give each rank a whole GPU (1)"
            )
        return gpus

    @model_validator(mode="after")
    def _placement_and_strategy(self) -> LearnerConfig:
        if self.device.startswith("cuda") and self.num_learners > 1 and self.gpus_per_learner == 0:
            raise ValueError(
                f"{self.num_learners} learners on device {self.device!r} would share one GPU: "
                "set learner.gpus_per_learner (Ray then gives each rank its own)"
            )
        if self.strategy == "fsdp" and self.num_learners > 1 and self.loss.grpo.kl_coef > 0:
            raise ValueError(
                "learner.strategy=fsdp with several learners cannot keep the KL reference model yet: "
                "set learner.loss.grpo.kl_coef=0 or learner.strategy=ddp"
            )
        if self.strategy == "fsdp" and self.lora is not None:
            raise ValueError(
                "learner.lora with learner.strategy=fsdp is not supported yet: adapters are small, use "
                "learner.strategy=ddp (or learner.lora=null for full fine-tuning)"
            )
        group = self.shard_group_size
        if group is not None and (self.strategy != "fsdp" or self.num_learners % group):
            raise ValueError(
                f"learner.shard_group_size={group} needs learner.strategy=fsdp and a group size that divides "
                f"learner.num_learners ({self.num_learners}, strategy {self.strategy})"
            )
        if self.gpus_per_learner > 0 and not self.device.startswith("cuda"):
            raise ValueError(
                f"learner.gpus_per_learner is {self.gpus_per_learner:g} but learner.device is {self.device!r}: use cuda"
            )
        return self

    @model_validator(mode="after")
    def _apply_echo_lambda(self) -> LearnerConfig:
        if self.echo_lambda is not None:  # the loss configs are frozen: swap in an updated copy
            echo = self.loss.echo.model_copy(update={"schedule": ConstantLambda(value=self.echo_lambda)})
            self.loss = self.loss.model_copy(update={"echo": echo})
        return self
