-- SPEC section 10: processed source rows deleted once final, so action
-- tables (and a sync layer's copies of them) stay small. The ledger keeps
-- its rows: a deleted id inserted again is still a replay, and dedupe keys
-- stay owned. docs/retention.md.

-- How long a source's rows are kept after their events are final; NULL keeps them forever.
ALTER TABLE sluice.sources ADD COLUMN retain interval CHECK (retain IS NULL OR retain >= interval '0');

-- Retention walks each source's ledger rows in commit order from where its
-- last pass stopped: a pass reads only what it deletes, never the whole
-- source or ledger, and writes nothing to the ledger (its deletes are the
-- only WAL it adds). Streamed events by (commit_lsn, event_id); backfilled
-- ones (no commit LSN) by processing time.
CREATE INDEX event_log_commit_order ON sluice.event_log (source, commit_lsn, event_id) WHERE commit_lsn IS NOT NULL;
CREATE INDEX event_log_backfilled ON sluice.event_log (source, processed_at, event_id) WHERE commit_lsn IS NULL;

CREATE TABLE sluice.retention_state (
  source text PRIMARY KEY,
  -- Streamed events up to here are done.
  through_lsn pg_lsn NOT NULL DEFAULT '0/0',
  through_event_id text NOT NULL DEFAULT '',
  -- Backfilled events up to here are done.
  through_processed_at timestamptz NOT NULL DEFAULT '-infinity',
  through_backfilled_id text NOT NULL DEFAULT ''
);

-- Dead events a pass went past: their rows go once they are resolved (dlq retry or discard).
CREATE TABLE sluice.retention_held (
  source text NOT NULL,
  event_id text NOT NULL,
  PRIMARY KEY (source, event_id)
);

DROP FUNCTION sluice.add_source(text, text, text, text, text, text, text, text);
-- Registers a source and adds its table to the publication, in one transaction.
CREATE FUNCTION sluice.add_source(
  relation text,
  actor_column text,
  event_type_column text DEFAULT NULL,
  event_type text DEFAULT NULL,
  id_column text DEFAULT 'id',
  dedupe_column text DEFAULT NULL,
  scope_column text DEFAULT NULL,
  publication text DEFAULT 'sluice',
  retain interval DEFAULT NULL
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
  INSERT INTO sluice.sources AS s (relation, event_type_column, event_type, id_column, actor_column, dedupe_column,
                                   scope_column, retain)
    VALUES (qualified, add_source.event_type_column, add_source.event_type, coalesce(add_source.id_column, 'id'),
            add_source.actor_column, add_source.dedupe_column, add_source.scope_column, add_source.retain)
    ON CONFLICT ON CONSTRAINT sources_pkey DO UPDATE SET
      event_type_column = EXCLUDED.event_type_column, event_type = EXCLUDED.event_type,
      id_column = EXCLUDED.id_column, actor_column = EXCLUDED.actor_column,
      dedupe_column = EXCLUDED.dedupe_column, scope_column = EXCLUDED.scope_column, retain = EXCLUDED.retain;
  IF NOT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                 WHERE p.pubname = add_source.publication AND pr.prrelid = rel) THEN
    EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', add_source.publication, rel);
  END IF;
END
$$;
