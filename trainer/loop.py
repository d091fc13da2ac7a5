"""The training loop: one Trainer that builds the run, trains, evaluates and checkpoints.

What is trained, on what and with which loss is the run's task (see trainer.task), chosen
by the run config's type in TASKS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import resource
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch

from trainer import checkpoint as ckpt
from trainer import parallel
from trainer import tokenizer as tokmod
from trainer.config import EXIT_OK, EXIT_PREEMPTED, RunConfig, TrainingConfig
from trainer.distributed import Dist
from trainer.dpo import DPOTask
from trainer.events import EventWriter
from trainer.export import export_model
from trainer.pretrain import PretrainTask
from trainer.sft import SFTTask
from trainer.sizing import flops_per_token, param_count
from trainer.task import StaleSamplerState, Task

# Dense bf16 tensor-core peak FLOP/s per GPU, from NVIDIA datasheets (no sparsity).
# MFU is reported against these; unknown GPUs and CPUs report null.
PEAK_BF16_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
}


class NanLossError(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(
            f"loss is {loss} at step {step}; lower lr, raise warmup_steps or check the data"
        )
        self.step = step


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of this GPU from PEAK_BF16_FLOPS, or None if unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():  # ordered so "H100 PCIe" wins over "H100"
        if key in name:
            return flops
    return None


def lr_at(step: int, cfg: TrainingConfig) -> float:
    """Learning rate for optimizer step `step` (1-based): linear warmup, then decay."""
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    if cfg.lr_schedule == "linear":
        return cfg.lr + progress * (cfg.min_lr - cfg.lr)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: CUDA allocator peak on GPU, max RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


# The task of each run type (RunConfig.type).
TASKS: dict[str, Callable[..., Task]] = {"pretrain": PretrainTask, "sft": SFTTask, "dpo": DPOTask}


class Trainer:
    """Runs one training attempt described by a RunConfig."""

    def __init__(
        self, cfg: RunConfig, dist: Dist, events: EventWriter, *, stop_at_step: int | None = None
    ) -> None:
        self.cfg, self.dist, self.events = cfg, dist, events
        # Tests use stop_at_step to preempt at an exact step, as if SIGTERM came then.
        self.stop_at_step = stop_at_step
        self.step = 0
        self.tokens = 0
        self.val_loss: float | None = None
        self.last_loss: float | None = None
        self._stop_requested = False
        # Installed first so a SIGTERM during setup is honoured at the first step boundary.
        self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._saved_step = -1
        self._val_step = -1  # the step val_loss was measured at
        t = cfg.training
        # Data-parallel rank and size: the ranks of a tensor-parallel group share batches.
        self.layout = parallel.layout(cfg.resources, dist)
        replicas = self.layout.dp_size
        per_step = t.micro_batch_size * replicas
        if t.batch_size % per_step:
            raise ValueError(
                f"batch_size ({t.batch_size}) must be a multiple of micro_batch_size x "
                f"data-parallel size ({t.micro_batch_size} x {replicas} = {per_step})"
            )
        self.grad_accum = t.batch_size // per_step
        self.tokens_per_step = t.batch_size * t.seq_len

        dev = dist.device
        use_bf16 = parallel.computes_in_bf16(t.precision, dev)
        self.precision = "bf16" if use_bf16 else "fp32"
        self.sharded = self.layout.sharded
        # FSDP casts parameters to bf16 itself (its mixed precision policy); DDP and tensor
        # parallelism alone use autocast.
        self.autocast: Any = (
            torch.autocast(dev.type, dtype=torch.bfloat16)
            if use_bf16 and not self.layout.fsdp
            else contextlib.nullcontext()
        )

        self.tokenizer_eot = tokmod.eot_id(tokmod.load(cfg.tokenizer_path))
        torch.manual_seed(t.seed)  # identical init on every rank (DDP also broadcasts it)
        self.task = TASKS[cfg.type](cfg, dist, events, layout=self.layout)
        # The run length can follow the data (fine-tuning for epochs): the schedule and
        # progress use the task's.
        t = dataclasses.replace(t, max_steps=self.task.max_steps)
        self.cfg = dataclasses.replace(cfg, training=t)
        self.raw_model = self.task.model
        self.model_cfg = self.raw_model.cfg
        self.raw_model.set_activation_checkpointing(t.activation_checkpointing)
        self.compiled = t.compiles(dev.type)
        # Under FSDP raw_model is sharded in place, so it must happen before the optimizer.
        self.model = parallel.wrap(
            self.raw_model,
            strategy=cfg.resources.strategy,
            dist=dist,
            bf16=use_bf16,
            compile=self.compiled,
            layout=self.layout,
        )
        self.optimizer = self.task.optimizer()
        # Replicas differ in dropout masks (a tensor-parallel group must not: its ranks hold
        # one replica); the streams are checkpointed, so resume is exact.
        torch.manual_seed(t.seed + self.layout.dp_rank)

        self.resumed_from: str | None = None
        self._maybe_resume()
        self.flops_per_token = flops_per_token(self.model_cfg, t.seq_len)
        self.peak_flops = peak_flops(dev)

    def _maybe_resume(self) -> None:
        lay = self.layout
        place = ckpt.Place(self.dist.rank, lay.dp_rank, self.dist.world_size, lay.tp_size)
        found = ckpt.load_latest(self.cfg.checkpoint_dir, place)
        if found is None:
            return
        if self.sharded and not found.sharded:
            raise ValueError(
                f"{found.path} was saved under DDP or by one process; resume it with strategy 'ddp'"
            )
        if found.sharded:
            # Distributed checkpoints are resharded on load: into this run's shards, or
            # into whole tensors under DDP or in one process.
            state = parallel.sharded_state(self.raw_model, self.optimizer)
            ckpt.load_sharded(found.path, state)
            parallel.load_sharded_state(self.raw_model, self.optimizer, state)
        else:
            self.raw_model.load_state_dict(found.model)
            self.optimizer.load_state_dict(found.optimizer)
        state = found.train_state
        self.step = self._saved_step = found.step
        self.tokens = int(state["tokens"])
        self.val_loss = state.get("val_loss")
        self.last_loss = state.get("loss")
        placed = False
        if found.rank_state is not None:
            ckpt.set_rng_state(found.rank_state["rng"])
            try:
                self.task.data.load_state_dict(found.rank_state["data"])
                placed = True
            except StaleSamplerState:
                pass
        if not placed:
            self.task.data.restart_at(found.step, self.cfg.training.batch_size)
            self.events.emit(
                "log",
                message=f"rank {self.dist.rank} has no usable sampler state in {found.path}; "
                f"placed at step {found.step} of the data stream",
            )
        self.resumed_from = found.path
        self.events.emit("log", message=f"resuming from {found.path} at step {found.step}")

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        # Only set a flag: the checkpoint must be taken at a step boundary, by all ranks.
        self._stop_requested = True

    def run(self) -> int:
        """Train to max_steps (or until preempted); return the process exit code."""
        t, dist = self.cfg.training, self.dist
        try:
            self.events.emit(
                "start",
                step=self.step,
                max_steps=t.max_steps,
                world_size=dist.world_size,
                device=str(dist.device),
                sharded=self.sharded,
                tensor_parallel_size=self.layout.tp_size,
                compiled=self.compiled,
                precision=self.precision,
                deterministic=t.deterministic,
                params=param_count(self.model_cfg),
                flops_per_token=self.flops_per_token,
                resumed_from=self.resumed_from,
            )
            while self.step < t.max_steps:
                stop = self._train_step()
                if stop:
                    path = self._save()
                    self.events.emit("preempted", step=self.step, checkpoint=path)
                    return EXIT_PREEMPTED
                if self.step % t.eval_interval == 0 and self.step < t.max_steps:
                    self._evaluate()
                if self.step % t.checkpoint_interval == 0 and self.step < t.max_steps:
                    self._save()
            self._evaluate()
            for sample in self.task.samples():
                self.events.emit("sample", step=self.step, **sample)
            self._save()
            export_dir = self._export()
            self.events.emit(
                "done",
                step=self.step,
                export_dir=export_dir,
                loss=self.last_loss,
                val_loss=self.val_loss,
            )
            return EXIT_OK
        finally:
            signal.signal(signal.SIGTERM, self._previous_sigterm)

    def _train_step(self) -> bool:
        """One optimizer step; return True when the run must stop (preemption)."""
        t, dist = self.cfg.training, self.dist
        step = self.step + 1
        t0 = time.perf_counter()
        lr = lr_at(step, t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if not self.raw_model.training:  # after an evaluation (train() walks every module)
            self.model.train()
        shares = self._forward_backward().reshape(-1)
        if t.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm(
                [p.grad for p in self.model.parameters() if p.grad is not None]
            )
        grad_norm = parallel.local_tensor(grad_norm)  # FSDP: a DTensor over the shards
        extra = self.task.extra_metrics()
        # One collective gives the global mean metrics and whether any rank wants to stop,
        # so every rank takes the same decision at the same step.
        stop = self._stop_requested or (self.stop_at_step is not None and step >= self.stop_at_step)
        stats = torch.cat([shares.float(), torch.tensor([float(stop)], device=dist.device)])
        dist.all_reduce_sum(stats)
        stats = torch.cat([stats[:-1] / dist.world_size, stats[-1:]])
        # The optimizer step is queued before the metrics are read, so the device does not
        # wait on the host between backward and step. A non-finite loss has then been
        # stepped on, but the run ends here and nothing after it is saved.
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        *values, stop_flag = stats.tolist()  # waits for the step: one stream
        means = dict(zip(self.task.metrics, values, strict=True))
        loss_val = means.pop("loss")
        if not math.isfinite(loss_val):
            raise NanLossError(step, loss_val)
        if dist.device.type == "cuda":
            torch.cuda.synchronize(dist.device)
        dt = time.perf_counter() - t0

        self.step = step
        self.tokens += self.tokens_per_step
        self.last_loss = loss_val
        tokens_per_s = self.tokens_per_step / dt
        mfu = None
        if self.peak_flops is not None:
            mfu = self.flops_per_token * tokens_per_s / (self.peak_flops * dist.world_size)
        self.events.emit(
            "step",
            step=step,
            loss=loss_val,
            lr=lr,
            grad_norm=float(grad_norm),
            tokens=self.tokens,
            tokens_per_s=tokens_per_s,
            mfu=mfu,
            step_time=dt,
            peak_memory_bytes=peak_memory_bytes(dist.device),
            **extra,
            **means,
        )
        return stop_flag > 0

    def _forward_backward(self) -> torch.Tensor:
        """Forward and backward over this step's micro-batches; return this rank's shares of
        the task's metrics: each, summed over ranks and divided by world size, is the step's
        value.
        """
        t, task = self.cfg.training, self.task
        batches = [task.data.next_train_batch(t.micro_batch_size) for _ in range(self.grad_accum)]
        weight = task.weight(batches)
        shares = torch.zeros(len(task.metrics), device=self.dist.device)
        contexts = parallel.micro_steps(self.model, self.grad_accum)
        for batch, sync_ctx in zip(batches, contexts, strict=True):
            with sync_ctx:
                with self.autocast:
                    out = task.loss(self.model, batch)
                weighted = out.sums * weight
                objective = weighted[0]
                if out.penalty is not None:
                    # A mean over its micro-batch: each micro-step's weighs the same.
                    objective = objective + out.penalty / self.grad_accum
                objective.backward()
            shares += weighted.detach()
        return shares

    @torch.no_grad()
    def _evaluate(self) -> None:
        """Mean validation metrics over the fixed batches; ranks split them and add up."""
        t, dist = self.cfg.training, self.dist
        # eval_batches counts batches of batch_size sequences, so the validation set does not
        # change with the number of ranks or the micro-batch size (the memory hint's remedy).
        batches = self.task.data.val_batches(t.micro_batch_size, t.eval_batches * t.batch_size)
        if not batches:
            return  # no validation set: val_loss stays null
        self.model.eval()
        # Sums of the task's val_metrics, then what they count for.
        totals = torch.zeros(len(self.task.val_metrics) + 1, device=dist.device)
        # Data-parallel groups split the batches (the ranks of a tensor-parallel group run
        # the same ones, and their sums and counts both scale by its size in the total).
        # Under FSDP or tensor parallelism every forward is a collective, so every rank
        # runs the same number; ranks past the end repeat batch 0 and do not count it.
        rank, size = self.layout.dp_rank, self.layout.dp_size
        rounds = -(-len(batches) // size) if self.sharded else len(batches)
        for r in range(rounds):
            i = r * size + rank if self.sharded else r
            if not self.sharded and i % size != rank:
                continue
            with self.autocast:
                sums, count = self.task.val_terms(batches[i] if i < len(batches) else batches[0])
            if i < len(batches):
                totals[:-1] += sums.float()
                totals[-1] += count
        dist.all_reduce_sum(totals)
        results = dict(zip(self.task.val_metrics, (totals[:-1] / totals[-1]).tolist(), strict=True))
        self.val_loss = results["val_loss"]
        self._val_step = self.step
        self.events.emit("eval", step=self.step, **results)

    def _save(self) -> str:
        """Checkpoint the current step on all ranks (skipped if already saved)."""
        path = f"{self.cfg.checkpoint_dir}/{ckpt.step_dir_name(self.step)}"
        if self._saved_step == self.step:
            return path
        weights: dict[str, Any]
        if self.sharded:
            weights = {"sharded_state": parallel.sharded_state(self.raw_model, self.optimizer)}
        else:
            weights = {
                "model_state": self.raw_model.state_dict(),
                "optimizer_state": self.optimizer.state_dict(),
            }
        path = ckpt.save(
            self.cfg.checkpoint_dir,
            self.step,
            dist=self.dist,
            **weights,
            val_loss=self.val_loss if self._val_step == self.step else None,
            train_state={
                "tokens": self.tokens,
                "val_loss": self.val_loss,
                "loss": self.last_loss,
                "tensor_parallel_size": self.layout.tp_size,
                "lr_scheduler": {"schedule": self.cfg.training.lr_schedule, "last_step": self.step},
            },
            rank_state={"data": self.task.data.state_dict(), "rng": ckpt.rng_state()},
            keep=self.cfg.keep_checkpoints,
        )
        self._saved_step = self.step
        self.events.emit("checkpoint", step=self.step, path=path, val_loss=self.val_loss)
        return path

    def _export(self) -> str:
        """Rank 0 writes the final model folder; the others wait for it."""
        state = self.task.export_state()
        if self.dist.is_main:
            export_model(
                state,
                self.model_cfg,
                tokenizer_path=self.cfg.tokenizer_path,
                eot_id=self.tokenizer_eot,
                export_dir=self.cfg.export_dir,
                im_end_id=self.task.im_end_id,
            )
        self.dist.barrier()
        return self.cfg.export_dir
