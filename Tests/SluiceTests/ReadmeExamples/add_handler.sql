-- 1. The derived state and the function: it receives the event as jsonb.
CREATE TABLE game.titles (user_id text PRIMARY KEY, title text NOT NULL);

CREATE FUNCTION game.set_title(event jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  title text := event -> 'row' -> 'payload' ->> 'title';
BEGIN
  IF title IS NULL OR length(title) > 40 THEN
    PERFORM sluice.reject('payload.title must be a string of at most 40 characters');
  END IF;
  INSERT INTO game.titles VALUES (event ->> 'actor', title)
    ON CONFLICT (user_id) DO UPDATE SET title = EXCLUDED.title;
END
$$;

-- 2. Register it, and 3. say who may emit the event type.
INSERT INTO sluice.handlers (event_type, function) VALUES ('set_title', 'game.set_title');
INSERT INTO sluice.permission_rules (event_type, role) VALUES ('set_title', 'player');
