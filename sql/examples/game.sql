-- The game example: XP awarded by offline clients. Run after `sluice migrate`:
--   psql -f sql/examples/game.sql
-- Handlers: award_xp and undo are Swift handlers (sluice-examples). No roles are granted here.

CREATE SCHEMA IF NOT EXISTS game;

-- Source: what clients write (untrusted).
CREATE TABLE game.actions (
  id uuid PRIMARY KEY,
  user_id text NOT NULL,
  type text NOT NULL,
  dedupe_key text,
  payload jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now()
);

-- Derived: what the server computed. level = 1 + xp / 1000.
CREATE TABLE game.user_xp (
  user_id text PRIMARY KEY,
  xp bigint NOT NULL,
  level int NOT NULL
);

-- Derived: every applied award, so that an undo can reverse it exactly once.
CREATE TABLE game.xp_awards (
  action_id uuid PRIMARY KEY,
  user_id text NOT NULL,
  xp int NOT NULL,
  undone_by uuid
);

SELECT sluice.add_source('game.actions', actor_column => 'user_id', event_type_column => 'type',
                         dedupe_column => 'dedupe_key');

INSERT INTO sluice.permission_rules (event_type, role)
VALUES ('award_xp', 'player'), ('undo', 'player')
ON CONFLICT (event_type, role) DO NOTHING;
