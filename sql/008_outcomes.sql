-- SPEC section 12: what became of each event, for the actor who sent it to
-- read through their sync layer (an Electric shape, PowerSync sync rules) or
-- an API in front of Postgres. The daemon writes a row here, when
-- SLUICE_OUTCOMES=on, in the statement that writes the event's ledger row:
-- so in the transaction of the handler's writes. README "Outcomes the client
-- can see".
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
-- Retention deletes the oldest first; dead outcomes stay until resolved, so
-- they are not in it (a pass never reads them again). Each index costs every
-- event its insert: the table has no index on actor, which a sync layer does
-- not need (it filters the replication stream). An API that reads one
-- actor's outcomes at a time wants one: README "Outcomes the client can
-- see" gives it, with what it costs the drain rate.
CREATE INDEX outcomes_processed ON sluice.outcomes (processed_at) WHERE status <> 'dead';

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
