-- A role for the daemon with only what it needs: run as the database owner
-- after `sluice migrate` (and after the examples, if you use them):
--   psql -f sql/roles.sql
--   psql -c "ALTER ROLE sluice_daemon PASSWORD '…'"      (or use another auth method)
-- The daemon then connects as sluice_daemon. It can stream (REPLICATION),
-- read the configuration and the sources, and write the ledger, its own
-- state and the derived tables: nothing else. It cannot change rules or
-- roles, nor write to a source. `sluice migrate` stays with the owner.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sluice_daemon') THEN
    -- Roles are cluster-wide, and advisory locks per database: two databases
    -- loading this file at once may both try.
    BEGIN
      CREATE ROLE sluice_daemon LOGIN REPLICATION;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;
    END;
  END IF;
END
$$;

GRANT USAGE ON SCHEMA sluice TO sluice_daemon;
-- Configuration: read only. Changes arrive through the stream.
GRANT SELECT ON sluice.sources, sluice.permission_rules, sluice.actor_roles, sluice.handlers,
                sluice.actor_keys, sluice.settings, sluice.schema_migrations TO sluice_daemon;
-- The ledger and the daemon's own state.
GRANT SELECT, INSERT, UPDATE ON sluice.event_log, sluice.stream_state TO sluice_daemon;
-- The ledger's partitions: their filters (sealing itself is sluice.ledger_seal, run as the owner).
GRANT SELECT, UPDATE ON sluice.ledger_partitions TO sluice_daemon;
GRANT SELECT, INSERT, UPDATE, DELETE ON sluice.policy_mirror, sluice.attempts, sluice.pending_backfills TO sluice_daemon;
-- Retention (SPEC section 10): where each source's walk stands. Deleting a
-- source's rows needs its own grant: GRANT DELETE ON <source> TO sluice_daemon.
GRANT SELECT, INSERT, UPDATE, DELETE ON sluice.retention_state, sluice.retention_held, sluice.retention_replays
  TO sluice_daemon;
-- How far a backfill is, for `status`.
GRANT SELECT, INSERT, UPDATE ON sluice.backfill_progress TO sluice_daemon;
GRANT EXECUTE ON FUNCTION sluice.reject(text) TO sluice_daemon;
-- Outcomes (SPEC section 12): written, updated by `dlq retry`, deleted by
-- retention. Row-level security is on for the table: this policy lets the
-- daemon's role at every row (clients get only their own actor's).
GRANT SELECT, INSERT, UPDATE, DELETE ON sluice.outcomes, sluice.outcome_retention_state, sluice.outcome_retention_held
  TO sluice_daemon;
DROP POLICY IF EXISTS outcomes_daemon ON sluice.outcomes;
CREATE POLICY outcomes_daemon ON sluice.outcomes TO sluice_daemon USING (true) WITH CHECK (true);
-- Webhooks (SPEC section 9): read the endpoints, queue and send deliveries.
GRANT SELECT ON sluice.endpoints TO sluice_daemon;
-- DELETE: delivered rows go after SLUICE_OUTBOX_RETENTION.
GRANT SELECT, INSERT, UPDATE, DELETE ON sluice.outbox TO sluice_daemon;
GRANT USAGE ON SEQUENCE sluice.outbox_id_seq TO sluice_daemon;
GRANT EXECUTE ON FUNCTION sluice.emit(text, jsonb), sluice.queue_delivery(text, jsonb, text, text, text, text)
  TO sluice_daemon;

-- The examples, when installed: read the sources, write the derived state.
DO $$
BEGIN
  IF to_regclass('game.actions') IS NOT NULL THEN
    GRANT USAGE ON SCHEMA game TO sluice_daemon;
    GRANT SELECT ON game.actions TO sluice_daemon;
    GRANT SELECT, INSERT, UPDATE ON game.user_xp, game.xp_awards TO sluice_daemon;
  END IF;
  IF to_regclass('shop.orders') IS NOT NULL THEN
    GRANT USAGE ON SCHEMA shop TO sluice_daemon;
    GRANT SELECT ON shop.orders, shop.restocks TO sluice_daemon;
    GRANT SELECT, UPDATE ON shop.products TO sluice_daemon;
    GRANT SELECT, INSERT, UPDATE ON shop.order_status TO sluice_daemon;
    GRANT EXECUTE ON FUNCTION shop.apply_restock(jsonb) TO sluice_daemon;
  END IF;
END
$$;
