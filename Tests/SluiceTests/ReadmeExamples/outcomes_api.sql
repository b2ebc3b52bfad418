-- The role your API reads outcomes as (PostgREST's "authenticated", an edge
-- function's role): it may SELECT the table, and row-level security shows it
-- the rows of the actor its request names, and no others.
CREATE ROLE app_user NOLOGIN;
GRANT USAGE ON SCHEMA sluice TO app_user;
GRANT SELECT ON sluice.outcomes TO app_user;

-- Each request names its actor from what authenticated it, never from what
-- the client sends. With PostgREST, a pre-request function reads the JWT:
CREATE FUNCTION public.outcomes_actor() RETURNS void LANGUAGE sql AS $$
  SELECT set_config('sluice.actor', current_setting('request.jwt.claims', true)::jsonb ->> 'sub', true)
$$;
-- PostgREST: db-pre-request = "public.outcomes_actor"
