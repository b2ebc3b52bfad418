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
