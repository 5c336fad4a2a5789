"""Learners: the model and its optimizer, one per rank, training data-parallel.

    a step's samples, dealt to ranks by the buffer ──► Learner rank 0..N-1 (Ray actors, or in-process)
                                                      ├─ micro-batches: forward to hidden states,
                                                      │  loss_from_hidden (GRPO + λ·CE), backward
                                                      ├─ DDP all-reduce (gloo on CPU, NCCL on GPU)
                                                      └─ clip, AdamW step
                               ◄── metrics, then weights (rank 0) for the policy engines

Every rank normalises its share by the whole step's token totals and scales its loss by the
world size (DDP averages gradients), so N ranks make the same update as one rank on the
full batch. FSDP (`strategy: fsdp`) shards parameters, gradients and optimizer state over the
ranks (gloo on CPU, NCCL on GPU), for models that do not fit one device: each rank builds the
model on `meta`, shards it, then receives its shards of rank 0's weights (`trainers.meta_init`).
A sharded forward is a collective, so every rank makes as many passes as the busiest one (idle
ranks pass one padding token at zero weight), and the full weights for the policy engines are
gathered by all ranks at once: rank 0 receives them. Checkpoints gather nothing: each rank writes and reads the
shards it holds (`trainers.checkpoint`), to a directory every rank reaches.

Numerics: the learner's weights and AdamW state are fp32 whatever dtype the policy engines serve
in (master weights: an update under 1/256 of a weight vanishes in bf16); `precision: bf16` runs
the matrix products in bf16 (autocast on one rank and under DDP; FSDP gathers bf16 parameters and
reduces gradients in fp32), and fp32 matrix products on CUDA use TF32. With activation
checkpointing each decoder block keeps only its input and recomputes the rest in the backward.
Every collective fails after `collective_timeout_s` rather than waiting for a dead rank forever.

With `lora` set, the model's targeted linear layers carry low-rank adapters (peft, in place):
only those train, hold optimizer state, travel to the policy engines and go into checkpoints;
the KL reference is the same model with its adapters switched off.

Where the ranks run and how they meet is `orchestrator.learner_group`'s business.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import logging
import socket
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from hillclimb.config.learner import LearnerConfig
from hillclimb.config.models import HFModelConfig, ModelConfig
from hillclimb.errors import ConfigError
from trainers.batching import Sample, StepTotals, micro_batches, to_loss_batch
from trainers.checkpoint import load_checkpoint, read_info, rng_state, save_checkpoint, set_rng_state
from trainers.losses import LossConfig, loss_from_hidden, token_logprobs
from trainers.meta_init import Pretrained, materialise, skeleton
from trainers.models.head import check_lm_head, lm_head
from trainers.models.load import load_model
from trainers.models.lora import adapter_update, add_adapters
from trainers.roles import Role

log = logging.getLogger(__name__)

_IMITATION = LossConfig.model_validate(
    {"echo": {"verifier_free": True, "schedule": {"type": "constant", "value": 1.0}}}
)
"""Behaviour cloning is the CE term alone, pointed at ACTION tokens (see `_as_imitation`)."""


def _as_imitation(batch: Any, totals: StepTotals) -> Any:
    """The batch with its ACTION targets relabelled as the CE term's targets and all else inert."""
    roles = torch.where(batch.roles_BT == Role.ACTION, int(Role.ENV), int(Role.PROMPT))
    keep = torch.ones_like(batch.env_keep_B)
    return dataclasses.replace(batch, roles_BT=roles, env_keep_B=keep, n_env_tokens=totals.n_action)


_ADDITIVE = {
    "loss",
    "grpo/loss",
    "echo/loss",
    "echo/ce",
    "bc/action_ce",
    "anchor/action_ce",
    "grpo/n_action_tokens",
    "echo/n_env_tokens",
    "learner/tokens",
}


def merge_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """Combine the metrics of micro-batches (or of ranks): step-normalised losses and token counts
    add up; per-token GRPO ratios average, weighted by each part's action tokens; the rest
    (λ, the gradient norm) is the same in every part."""
    total_actions = sum(p.get("grpo/n_action_tokens", 0.0) for p in parts)
    merged: dict[str, float] = {}
    for key in dict.fromkeys(k for p in parts for k in p):
        present = [p for p in parts if key in p]
        if key in _ADDITIVE:
            merged[key] = sum(p[key] for p in present)
        elif key.startswith("grpo/"):
            merged[key] = sum(p[key] * p.get("grpo/n_action_tokens", 0.0) for p in present) / max(total_actions, 1.0)
        else:
            merged[key] = present[-1][key]
    return merged


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _master_weights(config: ModelConfig) -> ModelConfig:
    """The model config the learner loads: fp32 weights whatever `policy.model.dtype` (the policy
    engines' dtype) says, for AdamW's updates to land (the tiny model is built in fp32)."""
    return config.model_copy(update={"dtype": "float32"}) if isinstance(config, HFModelConfig) else config


def fast_fp32_matmuls(device: Any) -> None:
    """On CUDA, fp32 matrix products in TF32 (10-bit mantissa, fp32 range and accumulation), as
    torchtitan and prime-rl train: what bf16 autocast leaves in fp32 runs on the tensor cores
    instead of at a fraction of their speed. Process-wide: a learner rank is a process of its own."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def checkpoint_blocks(model: Any) -> None:
    """Recompute each decoder block's activations in the backward: non-reentrant
    `torch.utils.checkpoint` around every block's `forward`, through transformers' own switch (as
    TRL does), so parameter names stay as they are (a `checkpoint_wrapper` would rename them all).
    It composes with DDP, with peft's adapters inside the blocks, and with FSDP's per-block
    sharding applied after it: FSDP's hooks stay outside the checkpointed `forward`."""
    if not model.supports_gradient_checkpointing:
        raise ConfigError(
            f"{type(model).__name__} cannot recompute its blocks' activations: "
            "set learner.activation_checkpointing=false"
        )
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def frozen_in_bf16(model: Any) -> None:
    """LoRA's frozen base weights in bf16, the adapters in fp32: a weight no optimizer updates
    needs no fp32 master copy, and bf16 autocast reads it in bf16 anyway, so the base takes half
    the memory (as peft's users load it). Not under FSDP, whose units all-gather one dtype."""
    for parameter in model.parameters():
        if not parameter.requires_grad:
            parameter.data = parameter.data.to(torch.bfloat16)


def _device(name: str) -> Any:
    """The torch device for `name`; a bare `cuda` is the first GPU this process sees (under Ray,
    the one it assigned this rank: it sets CUDA_VISIBLE_DEVICES per actor)."""
    device = torch.device(name)
    return torch.device("cuda", 0) if device.type == "cuda" and device.index is None else device


class _TrunkAndHead(torch.nn.Module):
    """What data parallelism wraps: forward gives final hidden states; the LM head is a
    submodule, so DDP syncs its gradient although the loss applies it outside `forward`."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        # No KV cache: a training forward would otherwise keep every layer's keys and values.
        return self.model.base_model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state


class Learner:
    """One rank. Usable in-process (world size 1) or as a Ray actor (`orchestrator.learner_group`)."""

    def __init__(
        self,
        model_config: ModelConfig,
        config: LearnerConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.config = config
        self.rank, self.world_size = rank, world_size
        if config.cpu_threads is not None:
            torch.set_num_threads(config.cpu_threads)
        torch.manual_seed(config.seed)
        self.device = _device(config.device)
        fast_fp32_matmuls(self.device)
        master = _master_weights(model_config)
        self._pretrained: Pretrained | None = None  # what fills a sharded skeleton once joined (`meta_init`)
        fsdp = config.strategy == "fsdp" and world_size > 1
        if fsdp:
            model, self.tokenizer, self._pretrained = skeleton(master, rank)
        else:
            model, self.tokenizer = load_model(master, self.device)
            check_lm_head(model)  # the losses apply the head themselves: its logits must be hidden · Wᵀ + b
        # LoRA layers replace the targeted linears inside `model`: it stays the model the losses read
        self.adapters = add_adapters(model, config.lora) if config.lora is not None else None
        if self.adapters is not None and config.bf16 and not fsdp:
            frozen_in_bf16(model)
        if config.checkpoints_activations:
            checkpoint_blocks(model)
        model.train()
        self.model = model  # the unwrapped module: what checkpoints and policy engines see
        self.module = _TrunkAndHead(model)  # wrapped for data parallelism by `join`
        self.sharded = False  # parameters split over the ranks (FSDP, once joined)
        self.optimizer = self._optimizer()
        self.reference: Any = None  # frozen copy of the policy as RL began, when the KL penalty is on (not LoRA)
        self._warned_long = False  # about a sample longer than micro_batch_tokens

    def _trainable(self) -> list[tuple[str, Any]]:
        """The parameters that train (all of them, or the adapters alone), by name."""
        return [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]

    def _optimizer(self) -> Any:
        config = self.config
        return torch.optim.AdamW(
            [p for _, p in self._trainable()], lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )

    def rendezvous_address(self) -> str:
        """Where the other ranks meet this one (rank 0): its node's address, a free port there."""
        import ray  # here, not above: a rank trained in-process (tests, benches) never loads Ray

        host = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        return f"tcp://{host}:{free_port(host)}"

    def join(self, init_method: str) -> None:
        """Join the ranks' process group and wrap the model for data parallelism (every rank at
        once); a sharded skeleton gets its weights then, each rank its shards."""
        self.module = self._distribute(self.module, init_method)
        if self._pretrained is not None:
            materialise(self.module, self.model, self._pretrained, self.device)
            self._pretrained = None  # rank 0's CPU copy of the whole model, freed
            self.optimizer = self._optimizer()  # over the parameters as materialised

    def placement(self) -> dict[str, Any]:
        """Where this rank runs: its node (Ray's id and address) and its device."""
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        address = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        return {"rank": self.rank, "node": node, "address": address, "device": str(self.device)}

    def _distribute(self, model: Any, init_method: str) -> Any:
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=self.config.collective_timeout_s)
        dist.init_process_group(
            backend, init_method=init_method, rank=self.rank, world_size=self.world_size, timeout=timeout
        )
        if self.config.strategy == "fsdp":
            # bf16 parameters gathered for compute, gradients reduced and kept in fp32 (torchtitan's default)
            bf16 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            policy = bf16 if self.config.bf16 else MixedPrecisionPolicy()
            mesh = self._mesh()
            for layer in model.model.base_model.layers:  # each block (checkpointed already) its own unit
                fully_shard(layer, mesh=mesh, mp_policy=policy)
            sharded = fully_shard(model, mesh=mesh, mp_policy=policy)
            self.sharded = True
            self.optimizer = self._optimizer()  # over the sharded parameters that replaced the originals
            return sharded
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _mesh(self) -> Any:
        """The ranks as FSDP sees them: one dimension (flat), or with `shard_group_size` two,
        (replicas, shards): each group of consecutive ranks (`pack` places them on one node)
        shards a copy, the groups replicate it (HSDP)."""
        shards = self.config.shards
        if shards == self.world_size:
            return init_device_mesh(self.device.type, (self.world_size,))
        shape = (self.world_size // shards, shards)
        return init_device_mesh(self.device.type, shape, mesh_dim_names=("replicate", "shard"))

    def _autocast(self) -> Any:
        """bf16 matrix products where `precision` asks, but not under FSDP, which casts the
        parameters it gathers itself (autocast there would only cast them again)."""
        if self.config.bf16 and not self.sharded:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _hidden(self, input_ids: Any, attention_mask: Any) -> Any:
        """Final hidden states (after the last norm): the LM head is applied, chunked, by the loss."""
        return self.module(input_ids, attention_mask)

    def train_step(
        self,
        samples: list[Sample],
        totals: StepTotals,
        step: int,
        *,
        imitate: bool = False,
        anchor: list[Sample] | None = None,
        anchor_totals: StepTotals | None = None,
        lr_scale: float = 1.0,
    ) -> dict[str, float]:
        """One optimizer step over this rank's share (`totals` are the whole step's, all ranks).

        `imitate=True` is behaviour cloning for the warm-up on oracle transcripts: plain
        cross-entropy on ACTION tokens and nothing else (no ENV term, no advantages).
        `anchor` adds that behaviour-cloning term, weighted by `anchor_coef`, to an RL step
        (`anchor_totals` are its whole-step token counts): it keeps the commands the policy
        learned while the ENV term moves the shared weights. `lr_scale` multiplies the learning
        rate for this step (the trainer's decay schedule)."""
        self.optimizer.zero_grad(set_to_none=True)
        lr = (self.config.warmup_lr if imitate and self.config.warmup_lr else self.config.lr) * lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        budget = self.config.micro_batch_tokens
        self._warn_once_if_longer_than(budget, [*samples, *(anchor or ())])
        parts: list[dict[str, float]] = []
        anchor_parts: list[dict[str, float]] = []
        # (micro-batch, its step totals, behaviour cloning?, loss weight, where its metrics go)
        jobs = [(micro, totals, imitate, 1.0, parts) for micro in micro_batches(samples, budget)]
        if anchor:
            assert anchor_totals is not None and not imitate, "an anchor rides on an RL step, with its step totals"
            coef = self.config.anchor_coef
            jobs += [(micro, anchor_totals, True, coef, anchor_parts) for micro in micro_batches(anchor, budget)]
        passes = self._passes_on_every_rank(len(jobs))
        for i in range(passes):
            last = i == passes - 1
            if i < len(jobs):
                micro, micro_totals, bc, weight, sink = jobs[i]
                sink.append(self._accumulate(micro, micro_totals, step, imitate=bc, weight=weight, last=last))
            else:
                self._padding_pass(last=last)
        trainable = [p for _, p in self._trainable()]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, self.config.grad_clip or float("inf"))
        self.optimizer.step()
        merged = merge_metrics(parts)
        if imitate:  # the CE term measured ACTION tokens: say so
            merged = {"bc/action_ce": merged.pop("echo/ce", 0.0), "loss": merged["loss"]}
        if anchor_parts:  # the step's objective includes the anchor's weighted term
            merged["anchor/action_ce"] = merge_metrics(anchor_parts)["echo/ce"]
            merged["loss"] = merged.get("loss", 0.0) + self.config.anchor_coef * merged["anchor/action_ce"]
        # Every position the model ran forward and backward over (prompts and the anchor's too):
        # the learner's work, which the loss's token counts understate.
        merged["learner/tokens"] = float(sum(map(len, samples)) + sum(map(len, anchor or ())))
        return {**merged, "grad_norm": float(_full(grad_norm)), "lr": lr}

    def _warn_once_if_longer_than(self, budget: int, samples: list[Sample]) -> None:
        """Say (once) when a sample outgrows `micro_batch_tokens`: it is trained in one pass of
        its whole length, which is where a learner that fits its budget runs out of memory."""
        longest = max(map(len, samples), default=0)
        if longest > budget and not self._warned_long:
            self._warned_long = True
            log.warning(
                "a sample of %d tokens exceeds learner.micro_batch_tokens=%d: it is trained as a micro-batch "
                "of its own, all %d tokens at once; if that runs out of memory, cap the rollouts' length "
                "or turn learner.activation_checkpointing on (warned once)",
                longest,
                budget,
                longest,
            )

    def _accumulate(
        self, micro: list[Sample], totals: StepTotals, step: int, *, imitate: bool, weight: float, last: bool
    ) -> dict[str, float]:
        """Forward and backward of one micro-batch; gradients add up until the optimizer step."""
        ids, mask, batch = to_loss_batch(micro, totals, pad_id=self.tokenizer.pad_token_id, device=self.device)
        if imitate:
            batch = _as_imitation(batch, totals)
        elif self.config.loss.grpo.kl_coef > 0:
            batch = dataclasses.replace(batch, ref_logprobs_BT=self._reference_logprobs(ids, mask, batch))
        with self._no_sync(last), self._autocast():
            hidden = self._hidden(ids, mask)
            head_weight, head_bias = lm_head(self.model)
            loss_config = _IMITATION if imitate else self.config.loss
            loss, metrics = loss_from_hidden(
                hidden[:, :-1], head_weight, batch, loss_config, step=step, lm_head_bias_V=head_bias
            )
            (loss * weight * self.world_size).backward()  # DDP averages over ranks; the step's loss is their sum
        return {k: float(v) for k, v in metrics.items()}

    def _reference_logprobs(self, ids: Any, mask: Any, batch: Any) -> Any:
        """Log-probs of ACTION targets under the reference policy, which the KL penalty keeps the
        policy close to: the policy as RL began (frozen on the first RL step), or with LoRA the
        model with its adapters off (no second copy of the weights)."""
        if self.reference is None and self.adapters is None:
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        reference = self.model if self.adapters is not None else self.reference
        unadapted = self.adapters.disable_adapter() if self.adapters is not None else contextlib.nullcontext()
        action = batch.roles_BT == Role.ACTION
        with torch.no_grad(), self._autocast(), unadapted:
            hidden = reference.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[:, :-1]
            weight, bias = lm_head(reference)
            logp = token_logprobs(
                hidden[action], weight, batch.targets_BT[action], bias, temperature=self.config.loss.temperature
            )
        return torch.zeros(action.shape, dtype=torch.float32, device=self.device).masked_scatter(action, logp)

    def _no_sync(self, last: bool) -> Any:
        """DDP all-reduces gradients on the last backward of a step only."""
        return self.module.no_sync() if not last and hasattr(self.module, "no_sync") else contextlib.nullcontext()

    def _passes_on_every_rank(self, mine: int) -> int:
        """The most forward passes any rank has to make this step (`mine` alone for one rank)."""
        if self.world_size == 1:
            return mine
        most = torch.tensor([mine], device=self.device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        return int(most)

    def _padding_forward(self) -> Any:
        """Final hidden states of one padding token: a pass that changes nothing but takes part in
        the ranks' collectives (FSDP gathers parameters in every forward)."""
        ids = self.device_tensor([[self.tokenizer.pad_token_id]])
        return self._hidden(ids, self.device_tensor([[1]]))

    def _padding_pass(self, *, last: bool) -> None:
        """Forward and backward at zero weight for a rank with fewer micro-batches than another:
        it joins the gradient collectives with zeros."""
        with self._no_sync(last), self._autocast():
            hidden = self._padding_forward()
            weight, bias = lm_head(self.model)  # after the forward: FSDP has gathered the head
            zero = hidden.sum() * 0.0 + weight.sum() * 0.0 + (bias.sum() * 0.0 if bias is not None else 0.0)
            zero.backward()

    def device_tensor(self, rows: list[list[int]]) -> Any:
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def gradients(self) -> dict[str, Any]:
        """The last step's (all-reduced, clipped) gradients on CPU, by parameter name: for
        inspection (sharded, every rank calls it and each gets the whole)."""
        return {n: _full(p.grad).detach().cpu() for n, p in self.model.named_parameters() if p.grad is not None}

    def weights(self) -> dict[str, Any]:
        """The model's full state dict on CPU, as the learner holds it (with LoRA its adapters
        alone); sharded, every rank calls it and rank 0 alone receives the tensors."""
        return {name: t for bucket in self.weight_buckets(None, float("inf")) for name, t in bucket.items()}

    def weight_buckets(self, dtype: Any, bucket_bytes: float) -> Iterator[dict[str, Any]]:
        """The weights for the policy engines, on CPU, cast to `dtype` (the engines'; None keeps the
        learner's), in buckets of at most `bucket_bytes` (a larger tensor alone), made one at a time
        so the learner never holds a second full copy. With LoRA, the adapters alone, as one
        bucket (`adapter_update`): the engines merge them into their own copy of the base weights.
        Sharded, every rank runs it (each tensor's gather is a collective) and rank 0 alone yields."""
        if self.adapters is not None:
            yield adapter_update(self.model)
            return
        bucket: dict[str, Any] = {}
        size = 0
        for name, tensor in self.model.state_dict().items():
            full = _full(tensor).detach()  # a collective when sharded: every rank, in the same order
            if self.rank != 0 and self.sharded:
                continue
            if dtype is not None and full.is_floating_point():
                full = full.to(dtype)  # cast on the device: half the bytes to copy out for bf16
            full = full.to("cpu", copy=True)  # a copy: the engine must not see later optimizer steps
            nbytes = full.numel() * full.element_size()
            if bucket and size + nbytes > bucket_bytes:
                yield bucket
                bucket, size = {}, 0
            bucket[name] = full
            size += nbytes
        if bucket:
            yield bucket

    def env_log_likelihood(self, samples: list[Sample]) -> tuple[float, int]:
        """Teacher-forced log-likelihood (nats, summed) of the ENV targets in `samples`, and their
        number; ranks each measure a share, as many passes on every rank."""
        total, count = 0.0, 0
        micros = micro_batches(samples, self.config.micro_batch_tokens)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), self._autocast():
            for i in range(self._passes_on_every_rank(len(micros))):
                if i >= len(micros):
                    self._padding_forward()
                    continue
                ids, mask, batch = to_loss_batch(
                    micros[i], StepTotals(1.0, 1.0), pad_id=self.tokenizer.pad_token_id, device=self.device
                )
                hidden = self._hidden(ids, mask)[:, :-1]
                weight, bias = lm_head(self.model)  # after the forward: FSDP has gathered the head
                env = batch.roles_BT == Role.ENV
                total += float(token_logprobs(hidden[env], weight, batch.targets_BT[env], bias).sum())
                count += int(env.sum())
        self.model.train(was_training)
        return total, count

    def env_cross_entropy(self, samples: list[Sample]) -> float:
        """Teacher-forced mean CE (nats per token) of ENV targets: how well the model predicts the
        environment (one rank; `orchestrator.learner_group` shares the work out)."""
        log_likelihood, count = self.env_log_likelihood(samples)
        return -log_likelihood / max(count, 1)

    def _state(self) -> dict[str, Any]:
        """What a checkpoint holds, as this rank holds it (shards under FSDP, nothing gathered):
        weights (with LoRA the adapters alone: the base weights come from the model config),
        optimizer, KL reference, and this rank's RNG states under its own name."""
        model = get_model_state_dict(self.model)
        if self.adapters is not None:
            model = {name: model[name] for name, _ in self._trainable()}
        state = {
            "model": model,
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer),
            "rng": {f"rank{self.rank}": rng_state()},
        }
        if self.reference is not None:
            state["reference"] = self.reference.state_dict()
        return state

    def save(self, directory: str, **info: Any) -> str:
        """Every rank calls it and writes its own part (`trainers.checkpoint`); each returns the
        checkpoint's path once it is whole."""
        lora = None if self.config.lora is None else self.config.lora.model_dump(mode="json")
        written = {"world_size": self.world_size, "strategy": self.config.strategy, "lora": lora}
        state = self._state()
        path = save_checkpoint(directory, state, rank=self.rank, **info, **written, has_reference="reference" in state)
        return str(path)

    def load(self, directory: str) -> dict[str, Any]:
        """Restore a checkpoint, whatever world size or strategy wrote it (every rank calls it):
        each rank reads the shards it holds. A rank the writers lacked takes rank 0's RNG states."""
        info = read_info(directory)
        self._check_trains_what(directory, info)
        if info["has_reference"] and self.reference is None:
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        elif not info["has_reference"]:
            self.reference = None
        state = self._state()  # the shapes and shards to read into (Adam's moments made if the optimizer has none yet)
        rng_of = f"rank{self.rank if self.rank < info['world_size'] else 0}"
        state["rng"] = {rng_of: state["rng"].pop(f"rank{self.rank}")}
        load_checkpoint(directory, state)
        options = StateDictOptions(strict=self.adapters is None)
        set_model_state_dict(self.model, state["model"], options=options)
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=options)
        set_rng_state(state["rng"][rng_of])
        return info

    def _check_trains_what(self, directory: str, info: dict[str, Any]) -> None:
        """Refuse a checkpoint written with other adapters, or with none where this learner has
        some (and the other way round): its tensors are not this learner's parameters."""
        mine = None if self.config.lora is None else self.config.lora.model_dump(mode="json")
        theirs = info.get("lora")
        if theirs != mine:
            wrote, trains = (f"adapters {x}" if x else "full fine-tuning" for x in (theirs, mine))
            raise ConfigError(
                f"{directory} was written by {wrote} and this learner trains {trains} (learner.lora): "
                "resume with the config that wrote it"
            )


def _full(tensor: Any) -> Any:
    """A sharded tensor gathered whole (a collective: every rank calls it); others as they are."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
