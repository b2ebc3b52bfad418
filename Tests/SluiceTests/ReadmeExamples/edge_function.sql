-- Where deliveries go, with a new Standard Webhooks secret for the receiver.
INSERT INTO sluice.endpoints (name, url, secret)
VALUES ('rewards', 'http://127.0.0.1:8000/rewards', sluice.generate_webhook_secret());

-- No code: every allowed 'level_up' event is sent to the endpoint as it is.
SELECT sluice.add_webhook('level_up', 'rewards');

-- Or from a SQL handler, in the same transaction as its own writes.
CREATE FUNCTION game.apply_purchase(e jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF coalesce(e->'row'->'payload'->>'item', '') = '' THEN
    PERFORM sluice.reject('payload.item missing');   -- rejected: nothing is sent
  END IF;
  PERFORM sluice.emit('rewards', jsonb_build_object('user', e->>'actor', 'item', e->'row'->'payload'->>'item'));
END
$$;
INSERT INTO sluice.handlers (event_type, function) VALUES ('purchase', 'game.apply_purchase');
INSERT INTO sluice.permission_rules (event_type, role) VALUES ('level_up', 'player'), ('purchase', 'player');
