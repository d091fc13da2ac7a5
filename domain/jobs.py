"""Jobs: create from a JobSpec (checked against the project's data and the nodes' memory),
show, cancel."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from sqlalchemy import Row, Select, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from domain import datasets, quotas, webhooks
from domain.access import impossible_id, owned, owned_async
from domain.db import get_async_engine
from domain.errors import Conflict, Invalid, NotFound
from domain.lifecycle import ACTIVE_ATTEMPT, TERMINAL, JobStatus, record, transition
from domain.orm import Attempt, Dataset, Job, Node, Tokenizer
from trainer.config import TENSOR_PARALLEL, ModelConfig, TrainingConfig, tensor_parallel_problem
from trainer.hf_config import model_config_from_hf
from trainer.sizing import estimate_memory, fits, param_count
from trainyard.ids import new_id
from trainyard.specs import BYTE_VOCAB, FINE_TUNING, JobSpec, tuning


def _usable_dataset(
    session: Session, project_id: str, dataset_id: str, field: str, kind: str
) -> Dataset:
    dataset = datasets.get(session=session, project_id=project_id, dataset_id=dataset_id)
    if dataset.status == "invalid":
        first = dataset.errors[0] if dataset.errors else {}
        where = f"line {first.get('line')}: " if first.get("line") else ""
        raise Conflict(
            "dataset_invalid",
            f"{field}: dataset {dataset.id} is invalid ({where}{first.get('message', '')})",
            {"field": field, "errors": dataset.errors},
        )
    if dataset.status == "deleted":
        raise NotFound("dataset", dataset_id)
    if dataset.kind != kind:
        needs = {
            "pretrain": "plain text or JSONL with a 'text' field",
            "sft": 'JSONL with "messages" or "prompt" and "completion"',
            "dpo": 'JSONL preference pairs with "input", "preferred_output" and '
            '"non_preferred_output"',
        }[kind]
        raise Conflict(
            "dataset_kind",
            f"{field}: dataset {dataset.id} is a {dataset.kind} dataset, a {kind} job needs "
            f"{needs}",
            {"field": field},
        )
    return dataset


def _resolve_base_model(
    session: Session, project_id: str, spec: JobSpec, resolved: dict[str, Any]
) -> tuple[str, int]:
    """Fill a fine-tuning job's architecture, context and tokenizer from its base model."""
    from domain import models  # models imports torch lazily; keep this module light

    base = models.get(
        session=session, project_id=project_id, model_id=str(spec.model.base_model_id)
    )
    try:
        cfg = model_config_from_hf(base.config)
    except (KeyError, ValueError) as exc:
        raise Conflict("base_model_unusable", f"model {base.id}: {exc}") from exc
    context = cfg.seq_len
    arch = {
        "arch": cfg.arch,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "d_model": cfg.d_model,
        "n_kv_head": cfg.n_kv_head,
        "d_ff": cfg.d_ff,
        "moe": dataclasses.asdict(cfg.moe) if cfg.moe is not None else None,
    }
    resolved["model"].update(arch)
    res = resolved["resources"]
    if res["strategy"] in TENSOR_PARALLEL:
        problem = tensor_parallel_problem(cfg, res["tensor_parallel_size"])
        if problem is not None:
            field, message = problem
            raise Invalid(
                "invalid_request",
                f"{message} (the architecture of base model {base.id})",
                [{"field": field, "message": message}],
            )
    training = resolved["training"]
    if "seq_len" not in spec.training.model_fields_set:
        training["seq_len"] = min(context, 2048)
    if arch["arch"] == "gpt2" and training["seq_len"] > context:
        raise Invalid(
            "invalid_request",
            f"training.seq_len ({training['seq_len']}) exceeds the base model's context "
            f"({context} positions)",
            [{"field": "training.seq_len", "message": f"at most {context}"}],
        )
    overlong = tuning(resolved)["overlong"]
    fraction = resolved["validation"]["fraction"]
    # DPO shards hold pairs: a variant of their own.
    variant = f"{spec.type}-{training['seq_len']}-{overlong}-{fraction or 'ds'}"
    return f"{base.id}/{variant}", int(base.config["vocab_size"])


def _tokenizer(session: Session, project_id: str, spec: JobSpec) -> tuple[str, int]:
    """The storage key and vocabulary size of the job's tokenizer, creating a BPE row once."""
    if spec.tokenizer.type == "byte":
        return "byte", BYTE_VOCAB
    if spec.tokenizer.type == "uploaded":
        row = session.get(Tokenizer, spec.tokenizer.tokenizer_id)
        if row is None or row.project_id != project_id:
            raise NotFound("tokenizer", str(spec.tokenizer.tokenizer_id))
        return row.id, row.vocab_size
    vocab = int(spec.tokenizer.vocab_size or 0)
    query = select(Tokenizer).where(
        Tokenizer.source_dataset_id == spec.dataset_id,
        Tokenizer.kind == "bpe",
        Tokenizer.vocab_size == vocab,
    )
    existing = session.execute(query).scalar()
    if existing:
        return existing.id, vocab
    tok = Tokenizer(
        id=new_id("tok"),
        project_id=project_id,
        kind="bpe",
        vocab_size=vocab,
        source_dataset_id=spec.dataset_id,
    )
    try:
        with session.begin_nested():
            session.add(tok)
    except IntegrityError:
        # Another request created the same tokenizer a moment ago: use that one.
        return session.execute(query).scalar_one().id, vocab
    return tok.id, vocab


def request_hash(asked: dict[str, Any]) -> str:
    """The hash of a request as the user sent it, in canonical JSON."""
    canonical = json.dumps(asked, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _node_memory(session: Session, pool: str, accelerator: str) -> int | None:
    """Memory of the pool's largest online node of a kind (a job runs on one node): one
    GPU's for GPU nodes, the host's RAM for CPU nodes; None while none has said."""
    best = session.execute(
        select(func.max(Node.memory_bytes)).where(
            Node.pool == pool, Node.accelerator == accelerator, Node.status == "online"
        )
    ).scalar()
    return None if best is None else int(best)


# What one CPU training process holds beyond the estimate: the interpreter, torch's own
# libraries and buffers, the data loader.
CPU_PROCESS_BYTES = 512 * 1024**2


def _check_memory(session: Session, resolved: dict[str, Any], default_gpu_bytes: int) -> None:
    """Refuse a job whose model cannot fit the GPUs it asked for, or the RAM of the CPU
    nodes whose processes share it, with the numbers."""
    res = resolved["resources"]
    has_gpus = session.execute(
        select(Node.id).where(Node.pool == res["pool"], Node.accelerator == "gpu").limit(1)
    ).first()
    on_cpu = res["accelerator"] == "cpu" or (res["accelerator"] == "auto" and not has_gpus)
    model, training = resolved["model"], resolved["training"]
    cfg = ModelConfig(
        arch=model["arch"],
        n_layer=model["n_layer"],
        n_head=model["n_head"],
        d_model=model["d_model"],
        n_kv_head=model.get("n_kv_head"),
        d_ff=model.get("d_ff"),
        moe=model.get("moe"),
        vocab_size=resolved["tokenizer"]["vocab_size"],
        seq_len=training["seq_len"],
        dropout=training["dropout"],
    )
    world = res["nodes"] * res["processes_per_node"]
    tp = res.get("tensor_parallel_size") or 1
    # DPO keeps a frozen copy of the base model on every process (never sharded; bf16
    # beside an FSDP policy that computes in bf16, counted here at fp32).
    reference = 4 * param_count(cfg) if resolved["type"] == "dpo" else 0
    gib = 1024**3
    if on_cpu:
        ram = _node_memory(session, res["pool"], "cpu")
        if ram is None:
            return  # no CPU node has told its RAM yet: nothing to hold the job against
        per_process = estimate_memory(
            cfg, TrainingConfig(**training), world, res["strategy"], "cpu", tensor_parallel_size=tp
        )
        per_process["total"] += reference
        need = res["processes_per_node"] * (per_process["total"] + CPU_PROCESS_BYTES)
        if need > ram:
            # Precision auto is sized for bf16 when its weight copies make it the larger.
            fp32 = ", set training.precision 'fp32'" if per_process["working_weights"] else ""
            raise Invalid(
                "insufficient_memory",
                f"the job needs about {need / gib:.1f} GiB of RAM per node "
                f"({res['processes_per_node']} processes of {per_process['total'] / gib:.1f} "
                f"GiB each), more than the {ram / gib:.1f} GiB of the CPU nodes in pool "
                f"{res['pool']!r}; lower resources.processes_per_node, "
                f"training.micro_batch_size or training.seq_len{fp32}, turn on "
                "training.activation_checkpointing, or use resources.strategy 'fsdp'",
                {"estimate_bytes": per_process, "node_memory_bytes": ram, "needed_bytes": need},
            )
        return
    estimate = estimate_memory(
        cfg, TrainingConfig(**training), world, res["strategy"], "gpu", tensor_parallel_size=tp
    )
    estimate["total"] += reference
    device = _node_memory(session, res["pool"], "gpu") or default_gpu_bytes
    if not fits(estimate, device):
        raise Invalid(
            "insufficient_memory",
            f"the job needs about {estimate['total'] / gib:.1f} GiB per GPU, more than the "
            f"{device / gib:.1f} GiB of the GPUs in pool {res['pool']!r}; lower "
            "training.micro_batch_size or training.seq_len, turn on "
            "training.activation_checkpointing, or use resources.strategy 'fsdp'",
            {"estimate_bytes": estimate, "device_memory_bytes": device},
        )


def _check_nodes(session: Session, resolved: dict[str, Any]) -> None:
    """Refuse a gang larger than the pool: it could never start."""
    res = resolved["resources"]
    if res["nodes"] == 1:
        return
    registered = int(
        session.execute(select(func.count(Node.id)).where(Node.pool == res["pool"])).scalar() or 0
    )
    if res["nodes"] > registered:
        raise Invalid(
            "invalid_request",
            f"resources.nodes ({res['nodes']}) exceeds the {registered} nodes registered in "
            f"pool {res['pool']!r}",
            [{"field": "resources.nodes", "message": f"at most {registered}"}],
        )


def create(
    *,
    session: Session,
    project_id: str,
    spec: JobSpec,
    idempotency_key: str | None,
    default_gpu_bytes: int = 80 * 1024**3,
    columns: dict[str, Any] | None = None,
) -> tuple[Job, bool]:
    """Validate a spec against the project's data and queue a job; (job, created).
    `columns` sets further fields of the new row (the OpenAI route's id, name, metadata)."""
    resolved = spec.resolved()
    asked = request_hash(spec.model_dump(mode="json", exclude_unset=True))
    if idempotency_key:
        first = session.execute(
            select(Job).where(Job.project_id == project_id, Job.idempotency_key == idempotency_key)
        ).scalar()
        if first is not None:
            if first.request_hash != asked:
                raise Invalid(
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request body; "
                    "send a new key for a new job",
                    {"job_id": first.id},
                )
            return first, False
    _usable_dataset(session, project_id, spec.dataset_id, "dataset_id", spec.type)
    if spec.validation.dataset_id:
        _usable_dataset(
            session, project_id, spec.validation.dataset_id, "validation.dataset_id", spec.type
        )
    if spec.type in FINE_TUNING:
        tokenizer_key, vocab_size = _resolve_base_model(session, project_id, spec, resolved)
    else:
        tokenizer_key, vocab_size = _tokenizer(session, project_id, spec)
    resolved["tokenizer"]["vocab_size"] = vocab_size
    _check_memory(session, resolved, default_gpu_bytes)
    _check_nodes(session, resolved)
    quotas.check_submit(session=session, project_id=project_id)
    given = spec.resources.priority if "priority" in spec.resources.model_fields_set else None
    resolved["resources"]["priority"] = quotas.priority(
        session=session, project_id=project_id, asked=given
    )
    fields: dict[str, Any] = {
        "id": new_id("job"),
        "project_id": project_id,
        "name": spec.name,
        "type": spec.type,
        "status": JobStatus.QUEUED.value,
        "priority": resolved["resources"]["priority"],
        "spec": resolved,
        "dataset_id": spec.dataset_id,
        "tokenizer_key": tokenizer_key,
        "idempotency_key": idempotency_key,
        "request_hash": asked,
    }
    job = Job(**{**fields, **(columns or {})})
    try:
        session.add(job)
        session.flush()  # the job row must exist before its first event
        record(session, job, "status", "job created", status=JobStatus.QUEUED.value)
        webhooks.job_changed(session, job, JobStatus.QUEUED.value)
        session.commit()
    except IntegrityError:
        session.rollback()
        if idempotency_key:  # a concurrent retry won the race: answer with its job
            return create(
                session=session,
                project_id=project_id,
                spec=spec,
                idempotency_key=idempotency_key,
                default_gpu_bytes=default_gpu_bytes,
                columns=columns,
            )
        raise
    return job, True


def get(*, session: Session, project_id: str, job_id: str) -> Job:
    """A job of the caller's project, or a 404."""
    return owned(session, Job, job_id, project_id, "job")


async def get_async(*, session: AsyncSession, project_id: str, job_id: str) -> Job:
    """get() on an asyncio session: one query."""
    return await owned_async(session, Job, job_id, project_id, "job")


# Built once: a statement costs more to build than to run from SQLAlchemy's cache.
_READ = select(Job.__table__).where(
    Job.id == bindparam("job_id"), Job.project_id == bindparam("project_id")
)


async def read(*, project_id: str, job_id: str) -> Row[Any]:
    """A job's columns (a row, not an ORM object: nothing to track), by id and project in
    one indexed select; the status poll that every dashboard sends. 404 if not the
    project's. The connection is held for the query alone, not while the answer is built
    and sent: under many polls at once, connections are what they queue for."""
    impossible_id(job_id, "job")
    async with get_async_engine().connect() as conn:
        result = await conn.execute(_READ, {"job_id": job_id, "project_id": project_id})
        row = result.first()
    if row is None:
        raise NotFound("job", job_id)
    return row


def _list_statement(*, by_status: bool, after: bool) -> Select[Any]:
    jobs = Job.__table__.c
    query = select(Job.__table__).where(jobs.project_id == bindparam("project_id"))
    if by_status:
        query = query.where(jobs.status == bindparam("status"))
    if after:
        query = query.where(jobs.id < bindparam("after"))
    return query.order_by(jobs.id.desc()).limit(bindparam("limit"))


# The list's four statements, built once (building one took a tenth of a page's CPU).
_LIST = {
    (by_status, after): _list_statement(by_status=by_status, after=after)
    for by_status in (False, True)
    for after in (False, True)
}


async def list_rows(
    *,
    project_id: str,
    status: JobStatus | None,
    limit: int,
    after: str | None,
) -> tuple[list[Row[Any]], bool]:
    """One page of the project's jobs (rows), newest first, optionally by status; whether
    more follow. Indexes on (project_id, id) and (project_id, status, id) serve the cursor."""
    query = _LIST[(status is not None, after is not None)]
    values = {"project_id": project_id, "status": status, "after": after, "limit": limit + 1}
    async with get_async_engine().connect() as conn:
        rows = (await conn.execute(query, values)).all()
    return list(rows[:limit]), len(rows) > limit


def of_owned_job(query: Any, job_column: Any, *, project_id: str, job_id: str) -> Any:
    """A query of a job's rows (events, metrics) that also checks the job's project, so the
    rows and the ownership cost one query; an empty answer still needs get_async for 404."""
    return query.join(Job, Job.id == job_column).where(
        job_column == job_id, Job.project_id == project_id
    )


def cancel(*, session: Session, project_id: str, job_id: str) -> Job:
    """Ask a job to stop; idempotent. A job with no running attempt stops at once."""
    job = get(session=session, project_id=project_id, job_id=job_id)
    if job.status in TERMINAL:
        return job
    job.cancel_requested = True
    live = session.execute(
        select(Attempt).where(Attempt.job_id == job.id, Attempt.status.in_(ACTIVE_ATTEMPT))
    ).scalar()
    if live is None:
        transition(session, job, JobStatus.CANCELLED, "cancelled by the user")
    else:
        transition(session, job, JobStatus.CANCELLING, "cancel requested by the user")
    session.commit()
    return job


def pause(*, session: Session, project_id: str, job_id: str) -> Job:
    """Checkpoint a job and free its nodes (status `paused`); idempotent."""
    job = get(session=session, project_id=project_id, job_id=job_id)
    if job.status == JobStatus.PAUSED:
        return job
    if job.status in TERMINAL or job.status in (JobStatus.CANCELLING, JobStatus.PREPARING):
        raise Conflict(
            "job_not_pausable",
            f"a {job.status} job cannot be paused"
            + ("; pause it once it is queued or running" if job.status == "preparing" else ""),
            {"status": job.status},
        )
    transition(session, job, JobStatus.PAUSED, "paused by the user; checkpointing")
    session.commit()
    return job


def resume(*, session: Session, project_id: str, job_id: str) -> Job:
    """Put a paused job back in the queue; it resumes from its latest checkpoint. A job
    already waiting to run (queued, preparing, preempted) is left as it is (idempotent);
    a running or finished one cannot be resumed."""
    job = get(session=session, project_id=project_id, job_id=job_id)
    if job.status in TERMINAL or job.status in (JobStatus.CANCELLING, JobStatus.RUNNING):
        raise Conflict(
            "job_not_resumable",
            f"a {job.status} job cannot be resumed; only a paused one can",
            {"status": job.status},
        )
    if job.status == JobStatus.PAUSED:
        transition(session, job, JobStatus.QUEUED, "resumed by the user")
        session.commit()
    return job
