-- SPEC 10: delivered outbox rows are deleted after SLUICE_OUTBOX_RETENTION
-- (dead ones stay until resolved). Retention walks them oldest first.
CREATE INDEX outbox_delivered ON sluice.outbox (delivered_at) WHERE status = 'delivered';

-- SPEC 10: a replay's source row (an id the ledger already holds, inserted
-- again) has no ledger row of its own, so the ledger walk never reaches
-- it. The daemon notes each replay of a source with `retain` here, in the
-- batch's transaction; retention deletes its row once `retain` has passed
-- since the replay's own commit (and its event is final), then the note.
CREATE TABLE sluice.retention_replays (
  source text NOT NULL,
  event_id text NOT NULL,          -- as the ledger records it (sluice.ledger_id)
  commit_lsn pg_lsn NOT NULL,
  committed_at timestamptz NOT NULL,
  PRIMARY KEY (source, event_id, commit_lsn)
);
CREATE INDEX retention_replays_due ON sluice.retention_replays (source, committed_at);

-- SPEC 8: how far each backfill is, for `status` (the daemon also logs it
-- and puts it in systemd's STATUS= every 5 s). One row per slot and source,
-- written by the backfill as it goes.
CREATE TABLE sluice.backfill_progress (
  slot text NOT NULL,
  source text NOT NULL,
  rows_done bigint NOT NULL,
  rows_total bigint NOT NULL,
  rows_per_second float8 NOT NULL,
  started_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL,
  PRIMARY KEY (slot, source)
);
