-- SPEC section 8: no row can stop the daemon, events do not change.

-- An id over 1,024 bytes (UTF-8) is recorded as 'sha256:' and the hex digest
-- of the id, so every ledger row fits the primary key's index. Ids that
-- begin with 'sha256:' or 'sluice:' are digested too, whatever their
-- length, so that no client id can take the place of a digest or of the
-- daemon's own ids for rows with a NULL id ('sluice:null-id@<lsn>'): the
-- mapping stays one to one. STABLE and not STRICT (as convert_to is), so
-- that the planner inlines it: it runs for every ledger row.
CREATE FUNCTION sluice.ledger_id(id text) RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE
  RETURN CASE WHEN octet_length(id) > 1024 OR starts_with(id, 'sha256:') OR starts_with(id, 'sluice:')
              THEN 'sha256:' || encode(sha256(convert_to(id, 'UTF8')), 'hex') ELSE id END;

-- Who owns a dedupe key, indexed by a digest of (type, actor, key): three
-- values of up to 1,024 bytes each would not fit a btree entry (2,704 bytes).
CREATE FUNCTION sluice.dedupe_digest(event_type text, actor text, dedupe_key text) RETURNS bytea
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  RETURN sha256(convert_to(event_type, 'UTF8') || '\x00'::bytea || convert_to(actor, 'UTF8') || '\x00'::bytea
                || convert_to(dedupe_key, 'UTF8'));
DROP INDEX sluice.event_log_dedupe_owner;
CREATE UNIQUE INDEX event_log_dedupe_owner ON sluice.event_log (sluice.dedupe_digest(event_type, actor, dedupe_key))
  WHERE dedupe_key IS NOT NULL AND status IN ('applied', 'rejected', 'dead');

-- A dead event as it was decoded when it went dead: `dlq retry` runs exactly
-- this, never the current contents of its source row.
ALTER TABLE sluice.event_log ADD COLUMN event jsonb;

-- Attempts of events being retried alone, counted outside their
-- transactions, so that an event that kills the daemon or its backend is
-- still counted across restarts, and goes dead after SLUICE_MAX_ATTEMPTS.
CREATE TABLE sluice.attempts (
  source text NOT NULL,
  event_id text NOT NULL,      -- as the ledger records it (sluice.ledger_id)
  attempts int NOT NULL,
  last_error text,
  in_flight boolean NOT NULL DEFAULT true,   -- begun, and neither finished nor failed yet
  -- Created while isolating after a session died outside any counted
  -- attempt: if this event turns out to be what killed it, that uncounted
  -- attempt is added once.
  uncounted_crash boolean NOT NULL DEFAULT false,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (source, event_id)
);

-- Per slot: whether a daemon's session is live (it did not stop cleanly if
-- this is still true when the next one starts), and the end LSN of the
-- last source transaction whose configuration changes are in the mirror.
ALTER TABLE sluice.stream_state ADD COLUMN live boolean NOT NULL DEFAULT false;
ALTER TABLE sluice.stream_state ADD COLUMN mirror_lsn pg_lsn;

-- The policy mirror, per slot: daemons on two slots of one database each keep their own.
ALTER TABLE sluice.policy_mirror ADD COLUMN slot text;
INSERT INTO sluice.policy_mirror (slot, table_name, key, row)
  SELECT s.slot, m.table_name, m.key, m.row FROM sluice.policy_mirror m CROSS JOIN sluice.stream_state s
  WHERE m.slot IS NULL AND s.mirror_ready;
DELETE FROM sluice.policy_mirror WHERE slot IS NULL;
ALTER TABLE sluice.policy_mirror ALTER COLUMN slot SET NOT NULL;
ALTER TABLE sluice.policy_mirror DROP CONSTRAINT policy_mirror_pkey;
ALTER TABLE sluice.policy_mirror ADD PRIMARY KEY (slot, table_name, key);

-- SPEC 8, registering a busy table: a source registered while the daemon
-- streams has rows older than its registration. Each such registration is
-- recorded with the batch that sees it and backfilled once: in a snapshot,
-- once the stream has been applied past that snapshot's WAL position, the
-- rows the ledger lacks, except those of the registering transaction
-- (before_xid), whose rows are the stream's.
CREATE TABLE sluice.pending_backfills (
  slot text NOT NULL,
  relation text NOT NULL,
  before_xid xid,
  registered_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (slot, relation)
);
