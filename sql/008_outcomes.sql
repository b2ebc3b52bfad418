-- SPEC section 12: what became of each event, for the actor who sent it to
-- read through their sync layer (an Electric shape, PowerSync sync rules) or
-- an API in front of Postgres. The daemon writes a row here, when
-- SLUICE_OUTCOMES=on, in the statement that writes the event's ledger row:
-- so in the transaction of the handler's writes. docs/outcomes.md.
--
-- Clients never read the ledger (it holds every user's events); this table
-- holds only what an actor may see of their own events, and only for
-- SLUICE_OUTCOME_RETENTION (default 7 days).
-- Identities compare byte-wise (COLLATE "C"), as everywhere in Sluice, and
-- their index comparisons are a memcmp.
CREATE TABLE sluice.outcomes (
  source text COLLATE "C" NOT NULL,    -- 'schema.table' of the action row
  event_id text COLLATE "C" NOT NULL,  -- the ledger's event_id (an over-long id is its digest)
  actor text COLLATE "C" NOT NULL,
  event_type text,
  status text NOT NULL CHECK (status IN ('applied', 'rejected', 'denied', 'duplicate', 'dead')),
  reason text,                     -- the ledger's, at most 1,024 bytes
  commit_lsn pg_lsn,
  processed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (source, event_id)
);
-- The primary key is the only index: each index costs every event its
-- insert (docs/outcomes.md, Cost). A sync layer needs no
-- index on actor (it filters the replication stream); an API that reads one
-- actor's outcomes at a time adds one. Retention finds old outcomes through
-- the ledger instead of an index on processed_at (below).

-- Outcome retention walks each source's ledger rows in commit order (the
-- ledger's own indexes) from where its last pass stopped, as source
-- retention does (migration 005): a pass reads only what it deletes.
-- Outcomes it passes that must stay a while (dead ones, ones `dlq retry`
-- wrote again lately, rows a client held locked) are remembered here and
-- deleted once they may go.
CREATE TABLE sluice.outcome_retention_state (
  source text PRIMARY KEY,
  through_lsn pg_lsn NOT NULL DEFAULT '0/0',
  through_event_id text NOT NULL DEFAULT '',
  through_processed_at timestamptz NOT NULL DEFAULT '-infinity',
  through_backfilled_id text NOT NULL DEFAULT ''
);
-- No outcome exists yet: events the slots have confirmed were processed
-- without one, so each registered source's walk starts there, not at the
-- beginning of a long history (backfilled events: from now).
INSERT INTO sluice.outcome_retention_state (source, through_lsn, through_processed_at)
SELECT relation,
       coalesce((SELECT min(confirmed_flush_lsn) FROM pg_replication_slots
                 WHERE database = current_database() AND plugin = 'pgoutput'), '0/0'),
       now()
FROM sluice.sources;

CREATE TABLE sluice.outcome_retention_held (
  source text NOT NULL,
  event_id text NOT NULL,
  PRIMARY KEY (source, event_id)
);

-- Every role but the table's owner (and roles that bypass row-level
-- security) sees only the rows of the actor its session names:
--   SET sluice.actor = 'alice'   (PostgREST: a pre-request function; an edge
--   function: set_config('sluice.actor', <authenticated user>, true))
-- Unset, it sees nothing. Nobody but the owner writes: roles.sql gives the
-- daemon's role its own policy.
ALTER TABLE sluice.outcomes ENABLE ROW LEVEL SECURITY;
CREATE POLICY outcomes_own_actor ON sluice.outcomes FOR SELECT
  USING (actor = current_setting('sluice.actor', true));

-- The ledger's reason as an outcome keeps it: at most 1,024 bytes, cut at a
-- character boundary (a character is at most 4 bytes, so 256 always fit).
CREATE FUNCTION sluice.outcome_reason(reason text) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN octet_length(reason) <= 1024 THEN reason ELSE
    (SELECT left(reason, n) FROM generate_series(1024, 256, -1) n WHERE octet_length(left(reason, n)) <= 1024 LIMIT 1)
  END
$$;
