"""wake-ups: PostgreSQL NOTIFYs the loops on commit of a change they act on (domain.wake)

Revision ID: 0014_wake_ups
Revises: 0013_prep_claims
Create Date: 2026-12-04 09:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014_wake_ups"
down_revision: str | None = "0013_prep_claims"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The channels of domain.wake, spelled out: a migration stays as it was written.
CONTROL, WEBHOOKS, EVENTS = "trainyard_control", "trainyard_webhooks", "trainyard_events"

# Columns that change all the time without giving the control loop anything to do: a
# running job's progress, heartbeats, a lease's renewal, and what the loop itself writes
# on every pass (why a job waits).
QUIET = {
    "jobs": ("step", "tokens", "tokens_per_s", "loss", "val_loss", "waiting_reason", "updated_at"),
    "attempts": ("heartbeat_at", "last_seq"),
    "nodes": ("heartbeat_at",),
    "prep_claims": ("heartbeat_at",),
    "leases": ("expires_at",),
    "datasets": (),
    "dataset_tokens": (),
    "quotas": (),
}

# NOTIFY on the channel named by the first argument; the payload is the column of the new
# row named by the second, if any. Notifications go out when the transaction commits, one
# per distinct (channel, payload): a transaction of many rows wakes a loop once.
FUNCTION = """
CREATE FUNCTION trainyard_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_NARGS > 1 AND TG_OP <> 'DELETE' THEN
        PERFORM pg_notify(TG_ARGV[0], to_jsonb(NEW) ->> TG_ARGV[1]);
    ELSE
        PERFORM pg_notify(TG_ARGV[0], '');
    END IF;
    RETURN NULL;
END
$$
"""


def _changed(columns: Sequence[str]) -> str:
    """A WHEN condition: some column other than these changed."""
    # As jsonb: rows with json columns have no equality operator of their own.
    quiet = "'{" + ",".join(columns) + "}'::text[]"
    return f"(to_jsonb(OLD) - {quiet}) IS DISTINCT FROM (to_jsonb(NEW) - {quiet})"


def _triggers() -> list[tuple[str, str, str]]:
    """(name, table, CREATE TRIGGER statement) of every wake-up."""
    out = []
    for table, quiet in QUIET.items():
        out.append(
            (
                f"{table}_wake_control",
                table,
                f"AFTER INSERT OR DELETE ON {table} FOR EACH ROW "
                f"EXECUTE FUNCTION trainyard_notify('{CONTROL}')",
            )
        )
        out.append(
            (
                f"{table}_wake_control_update",
                table,
                f"AFTER UPDATE ON {table} FOR EACH ROW WHEN ({_changed(quiet)}) "
                f"EXECUTE FUNCTION trainyard_notify('{CONTROL}')",
            )
        )
    out.append(
        (
            "webhook_deliveries_wake",
            "webhook_deliveries",
            "AFTER INSERT ON webhook_deliveries FOR EACH ROW "
            f"EXECUTE FUNCTION trainyard_notify('{WEBHOOKS}')",
        )
    )
    out.append(
        (
            "events_wake",
            "events",
            "AFTER INSERT ON events FOR EACH ROW "
            f"EXECUTE FUNCTION trainyard_notify('{EVENTS}', 'job_id')",
        )
    )
    # A job's stream follows its metrics (written with the job's step) and ends with it.
    progress = (
        "(OLD.step, OLD.val_loss, OLD.status) IS DISTINCT FROM (NEW.step, NEW.val_loss, NEW.status)"
    )
    out.append(
        (
            "jobs_wake_events",
            "jobs",
            f"AFTER UPDATE ON jobs FOR EACH ROW WHEN ({progress}) "
            f"EXECUTE FUNCTION trainyard_notify('{EVENTS}', 'id')",
        )
    )
    return out


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: the loops poll
    op.execute(FUNCTION)
    for name, _table, body in _triggers():
        op.execute(f"CREATE TRIGGER {name} {body}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, table, _body in _triggers():
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS trainyard_notify()")
