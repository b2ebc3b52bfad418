-- The highest commit LSN of any event in the ledger, per slot. Events of
-- later transactions cannot be replays, so the daemon's fast path skips
-- looking them up (the careful path always looks).
ALTER TABLE sluice.stream_state ADD COLUMN ledger_high_water pg_lsn;

-- `sluice status` counts by scanning; an index on status cost every insert.
DROP INDEX IF EXISTS sluice.event_log_status;
