-- Sluice's own schema. Applied once by `sluice migrate`, recorded in
-- sluice.schema_migrations. Every configuration table has a primary key so
-- that its updates and deletes replicate.

CREATE SCHEMA IF NOT EXISTS sluice;

-- Which tables are event sources and how a row becomes an event.
CREATE TABLE sluice.sources (
  relation text PRIMARY KEY,                -- 'schema.table'
  event_type_column text,                   -- the column holding the type ...
  event_type text,                          -- ... or one fixed type for every row
  id_column text NOT NULL DEFAULT 'id',
  actor_column text NOT NULL,
  dedupe_column text,
  scope_column text,
  CONSTRAINT sources_exactly_one_type CHECK ((event_type_column IS NULL) <> (event_type IS NULL))
);

-- What each role may emit. event_type '*' = any type; role 'anyone' = every non-empty actor.
CREATE TABLE sluice.permission_rules (
  id bigserial PRIMARY KEY,
  event_type text NOT NULL,
  role text NOT NULL,
  UNIQUE (event_type, role)
);

-- Who holds which role, globally (scope NULL) or in one scope.
CREATE TABLE sluice.actor_roles (
  id bigserial PRIMARY KEY,
  actor text NOT NULL,
  role text NOT NULL,
  scope text,
  UNIQUE NULLS NOT DISTINCT (actor, role, scope)
);

-- SQL handlers: a function taking the event as jsonb.
CREATE TABLE sluice.handlers (
  event_type text PRIMARY KEY,
  function text NOT NULL
);

-- The ledger: one row per event seen, with its outcome.
CREATE TABLE sluice.event_log (
  source text NOT NULL,
  event_id text NOT NULL,
  event_type text,
  actor text,
  dedupe_key text,
  status text NOT NULL CHECK (status IN ('applied', 'rejected', 'denied', 'duplicate', 'dead')),
  reason text,
  attempts int NOT NULL DEFAULT 0,
  commit_lsn pg_lsn,
  committed_at timestamptz,
  processed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (source, event_id)
);
-- An allowed event owns its (type, actor, dedupe key); denied and duplicate events own none.
CREATE UNIQUE INDEX event_log_dedupe_owner ON sluice.event_log (event_type, actor, dedupe_key)
  WHERE dedupe_key IS NOT NULL AND status IN ('applied', 'rejected', 'dead');
CREATE INDEX event_log_dead ON sluice.event_log (processed_at) WHERE status = 'dead';
CREATE INDEX event_log_status ON sluice.event_log (status);

-- The configuration tables as of the daemon's position in the stream. The
-- daemon writes it in the same transaction as the ledger rows, so that after
-- a restart each event is still judged by the rules as they stood at its
-- place in the WAL, not as they stand now.
CREATE TABLE sluice.policy_mirror (
  table_name text NOT NULL,
  key text NOT NULL,
  row jsonb NOT NULL,
  PRIMARY KEY (table_name, key)
);

-- Per slot: whether policy_mirror was initialised from the slot's snapshot,
-- and how far the daemon has committed.
CREATE TABLE sluice.stream_state (
  slot text PRIMARY KEY,
  mirror_ready boolean NOT NULL DEFAULT false,
  processed_lsn pg_lsn,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Registers a source and adds its table to the publication, in one transaction.
CREATE FUNCTION sluice.add_source(
  relation text,
  actor_column text,
  event_type_column text DEFAULT NULL,
  event_type text DEFAULT NULL,
  id_column text DEFAULT 'id',
  dedupe_column text DEFAULT NULL,
  scope_column text DEFAULT NULL,
  publication text DEFAULT 'sluice'
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  rel regclass := to_regclass(relation);
  qualified text;
BEGIN
  IF rel IS NULL THEN
    RAISE EXCEPTION 'sluice.add_source: no table %', relation;
  END IF;
  SELECT n.nspname || '.' || c.relname INTO qualified
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
  INSERT INTO sluice.sources AS s (relation, event_type_column, event_type, id_column, actor_column, dedupe_column, scope_column)
    VALUES (qualified, add_source.event_type_column, add_source.event_type, coalesce(add_source.id_column, 'id'),
            add_source.actor_column, add_source.dedupe_column, add_source.scope_column)
    ON CONFLICT ON CONSTRAINT sources_pkey DO UPDATE SET
      event_type_column = EXCLUDED.event_type_column, event_type = EXCLUDED.event_type,
      id_column = EXCLUDED.id_column, actor_column = EXCLUDED.actor_column,
      dedupe_column = EXCLUDED.dedupe_column, scope_column = EXCLUDED.scope_column;
  IF NOT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                 WHERE p.pubname = add_source.publication AND pr.prrelid = rel) THEN
    EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', add_source.publication, rel);
  END IF;
END
$$;

-- What a SQL handler calls to reject its event: the reason becomes the ledger's.
CREATE FUNCTION sluice.reject(reason text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = 'SL001', MESSAGE = reason;
END
$$;
