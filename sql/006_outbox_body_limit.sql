-- A delivery's body is at most 1 MiB (as JSON text). Rows of up to 16 MiB
-- are events, and the daemon holds a body several times over while it is
-- sent: without a limit, rows written by clients could make the daemon run
-- out of memory, over and over, before any outcome is recorded. Over the
-- limit, emit is an error of the handler (retried, then dead); `add_webhook`
-- rejects such an event instead (the daemon checks before it emits).
CREATE OR REPLACE FUNCTION sluice.queue_delivery(
  endpoint text, body jsonb, source text, event_id text, event_type text, actor text
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  n bigint;
  key text;
  size int;
BEGIN
  IF endpoint IS NULL OR NOT EXISTS (SELECT 1 FROM sluice.endpoints e WHERE e.name = queue_delivery.endpoint) THEN
    RAISE EXCEPTION 'sluice.emit: unknown endpoint %', coalesce(quote_literal(endpoint), 'NULL')
      USING HINT = 'INSERT INTO sluice.endpoints (name, url, secret) VALUES (...)';
  END IF;
  IF body IS NULL THEN
    RAISE EXCEPTION 'sluice.emit: the body of a delivery to % is NULL', quote_literal(endpoint);
  END IF;
  size := octet_length(body::text);
  IF size > 1048576 THEN
    RAISE EXCEPTION 'sluice.emit: a body of % bytes for %, over the limit of 1 MiB', size, quote_literal(endpoint);
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
REVOKE EXECUTE ON FUNCTION sluice.queue_delivery(text, jsonb, text, text, text, text) FROM PUBLIC;
