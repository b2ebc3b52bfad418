-- SPEC section 9: effects beyond Postgres, through a transactional outbox.
-- A handler queues a delivery in its own transaction, so a delivery exists
-- if and only if its event was applied; the daemon that holds the slot
-- sends it (docs/webhooks.md).

-- The key of a Standard Webhooks secret ('whsec_' + base64 of 24 to 64
-- bytes), or NULL when the text is not one.
CREATE FUNCTION sluice.webhook_secret_key(secret text) RETURNS bytea
  LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
  key bytea;
BEGIN
  IF NOT starts_with(secret, 'whsec_') OR substr(secret, 7) !~ '^[A-Za-z0-9+/]+={0,2}$' THEN
    RETURN NULL;
  END IF;
  key := decode(substr(secret, 7), 'base64');
  RETURN CASE WHEN octet_length(key) BETWEEN 24 AND 64 THEN key END;
EXCEPTION WHEN invalid_parameter_value THEN
  RETURN NULL;
END
$$;

-- A new random secret, for `INSERT INTO sluice.endpoints ... secret => sluice.generate_webhook_secret()`:
-- 32 bytes from two random (version 4) UUIDs, 244 random bits.
CREATE FUNCTION sluice.generate_webhook_secret() RETURNS text
  LANGUAGE sql VOLATILE
  RETURN 'whsec_' || encode(decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'), 'base64');

-- Where deliveries go. The URL and the secret never appear in logs, status
-- or metrics: only the name does.
CREATE TABLE sluice.endpoints (
  name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,100}$'),
  url text NOT NULL CHECK (url ~* '^https?://'),
  secret text CHECK (secret IS NULL OR sluice.webhook_secret_key(secret) IS NOT NULL),
  timeout_ms int NOT NULL DEFAULT 10000 CHECK (timeout_ms BETWEEN 1 AND 600000),
  max_in_flight int NOT NULL DEFAULT 4 CHECK (max_in_flight BETWEEN 1 AND 1000)
);
COMMENT ON COLUMN sluice.endpoints.secret IS
  'whsec_ followed by the base64 of a 24 to 64 byte key (Standard Webhooks); NULL sends unsigned deliveries';

-- One delivery per emit. id is assigned in the order the handlers' batches
-- commit (one daemon applies them one after another): deliveries of one
-- endpoint and actor are sent in id order.
CREATE TABLE sluice.outbox (
  id bigserial PRIMARY KEY,
  endpoint text NOT NULL,
  source text NOT NULL,
  event_id text NOT NULL,          -- as the ledger records it (sluice.ledger_id)
  event_type text NOT NULL,
  actor text,
  idempotency_key text UNIQUE NOT NULL,
  body jsonb NOT NULL,
  status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
  attempts int NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  last_status int,
  last_error text,
  created_at timestamptz NOT NULL DEFAULT now(),
  delivered_at timestamptz
);
-- The deliverer reads each endpoint's pending deliveries in pages, in id order.
CREATE INDEX outbox_pending ON sluice.outbox (endpoint, id) WHERE status = 'pending';
CREATE INDEX outbox_dead ON sluice.outbox (id) WHERE status = 'dead';
-- Counting an event's emits; finding an event's deliveries.
CREATE INDEX outbox_event ON sluice.outbox (source, event_id);

-- A part of a webhook-id: printable ASCII without spaces or '/' is kept;
-- anything else becomes 'sha256:' and its hex digest. Ledger ids that begin
-- with 'sha256:' are digests already (sluice.ledger_id), so the mapping
-- stays one to one, and a header carries the id exactly as it was signed.
CREATE FUNCTION sluice.webhook_id_part(part text) RETURNS text
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  RETURN CASE WHEN part ~ '^[!-.0-~]+$' THEN part ELSE 'sha256:' || encode(sha256(convert_to(part, 'UTF8')), 'hex') END;

-- Queues one delivery of the event being handled: `<source>/<event_id>/<n>`,
-- n counting the event's emits from 1. What sluice.emit and Swift's
-- context.emit call; rolled back with the event's handler if it rejects or fails.
CREATE FUNCTION sluice.queue_delivery(
  endpoint text, body jsonb, source text, event_id text, event_type text, actor text
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  n bigint;
  key text;
BEGIN
  IF endpoint IS NULL OR NOT EXISTS (SELECT 1 FROM sluice.endpoints e WHERE e.name = queue_delivery.endpoint) THEN
    RAISE EXCEPTION 'sluice.emit: unknown endpoint %', coalesce(quote_literal(endpoint), 'NULL')
      USING HINT = 'INSERT INTO sluice.endpoints (name, url, secret) VALUES (...)';
  END IF;
  IF body IS NULL THEN
    RAISE EXCEPTION 'sluice.emit: the body of a delivery to % is NULL', quote_literal(endpoint);
  END IF;
  SELECT count(*) + 1 INTO n FROM sluice.outbox o
    WHERE o.source = queue_delivery.source AND o.event_id = queue_delivery.event_id;
  key := sluice.webhook_id_part(source) || '/' || sluice.webhook_id_part(event_id) || '/' || n;
  INSERT INTO sluice.outbox (endpoint, source, event_id, event_type, actor, idempotency_key, body)
    VALUES (queue_delivery.endpoint, queue_delivery.source, queue_delivery.event_id, queue_delivery.event_type,
            queue_delivery.actor, key, queue_delivery.body);
  -- The daemon commits batches asynchronously; one that queues a delivery
  -- waits for its WAL flush, so nothing is sent for a commit a crash could
  -- still undo. Transaction-local, and undone with a rejected event's savepoint.
  PERFORM set_config('synchronous_commit', 'on', true);
  RETURN key;
END
$$;

-- Called by a SQL handler: queues a delivery of `body` to `endpoint` in the
-- handler's transaction and returns its webhook-id. The daemon names the
-- event being handled in the transaction-local setting sluice.event.
CREATE FUNCTION sluice.emit(endpoint text, body jsonb) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  event jsonb := nullif(current_setting('sluice.event', true), '')::jsonb;
BEGIN
  IF event IS NULL THEN
    RAISE EXCEPTION 'sluice.emit is called from a SQL handler while the daemon runs it'
      USING HINT = 'a Swift handler calls context.emit(endpoint:body:)';
  END IF;
  -- Rows without an id have the daemon's own id ('synthetic'), recorded as it is.
  RETURN sluice.queue_delivery(
    endpoint, body, event->>'source',
    CASE WHEN (event->>'synthetic')::bool THEN event->>'id' ELSE sluice.ledger_id(event->>'id') END,
    event->>'type', event->>'actor');
END
$$;

-- A handler that sends its event, as SQL handlers receive it, to an
-- endpoint: no code. Replaces any SQL handler of the type.
ALTER TABLE sluice.handlers ALTER COLUMN function DROP NOT NULL;
ALTER TABLE sluice.handlers ADD COLUMN endpoint text;
ALTER TABLE sluice.handlers ADD CONSTRAINT handlers_function_or_endpoint CHECK ((function IS NULL) <> (endpoint IS NULL));

CREATE FUNCTION sluice.add_webhook(event_type text, endpoint text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM sluice.endpoints e WHERE e.name = add_webhook.endpoint) THEN
    RAISE EXCEPTION 'sluice.add_webhook: unknown endpoint %', coalesce(quote_literal(endpoint), 'NULL');
  END IF;
  INSERT INTO sluice.handlers AS h (event_type, function, endpoint) VALUES (add_webhook.event_type, NULL, add_webhook.endpoint)
    ON CONFLICT ON CONSTRAINT handlers_pkey DO UPDATE SET function = NULL, endpoint = EXCLUDED.endpoint;
END
$$;

-- Only the owner and the daemon queue deliveries (roles.sql grants the daemon).
REVOKE EXECUTE ON FUNCTION sluice.queue_delivery(text, jsonb, text, text, text, text), sluice.emit(text, jsonb),
  sluice.add_webhook(text, text) FROM PUBLIC;
