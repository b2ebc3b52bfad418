-- SPEC section 13: whose event it is. The actor column is written by the
-- client, so by itself it proves nothing. Each source says where its actor
-- comes from (sluice.sources.actor_from):
--   'session': a guard on the table stamps the actor of the inserting
--              session (sluice.current_actor()) at insert time, so nothing
--              forged reaches the WAL;
--   'column':  the column as written (sources only trusted services write);
--   'signed':  an Ed25519 signature by a key in sluice.actor_keys, verified
--              by the daemon as of the event's WAL position.
-- Sources that exist now keep 'column': an upgrade changes nothing until the
-- operator switches. Sources registered from here on default to 'session'.
-- docs/identity.md.

ALTER TABLE sluice.sources
  ADD COLUMN actor_from text NOT NULL DEFAULT 'column'
    CONSTRAINT sources_actor_from CHECK (actor_from IN ('session', 'column', 'signed')),
  -- A SQL function of the new row (the registered table's row type) that returns its scope.
  ADD COLUMN scope_from text,
  -- 'signed': the row's signature (bytea, 64 bytes), key id (text) and signed payload (json, text or bytea).
  ADD COLUMN signature_column text,
  ADD COLUMN key_column text,
  ADD COLUMN payload_column text,
  -- 'session': rows already in the table when it was registered (or in a
  -- populated table attached later as a partition) never met the guard;
  -- 'deny' makes their events denied when a backfill reads them, 'trust' keeps them.
  ADD COLUMN existing text NOT NULL DEFAULT 'deny' CONSTRAINT sources_existing CHECK (existing IN ('deny', 'trust')),
  -- Which rows met the guard: those committed after this snapshot, taken
  -- once the guard was in place (add_source), or written by guard_xid itself.
  ADD COLUMN guard_snapshot pg_snapshot,
  ADD COLUMN guard_xid xid8,
  ADD CONSTRAINT sources_signed_columns CHECK (
    actor_from <> 'signed' OR (signature_column IS NOT NULL AND key_column IS NOT NULL AND payload_column IS NOT NULL));
ALTER TABLE sluice.sources ALTER COLUMN actor_from SET DEFAULT 'session';

-- Database-side settings that the guard reads.
CREATE TABLE sluice.settings (
  name text PRIMARY KEY,
  value text NOT NULL
);
INSERT INTO sluice.settings (name, value) VALUES ('max_row_bytes', '1048576');

-- Roles whose rows keep their actor column when no identity is set (server
-- jobs, trusted services). Superusers and a table's owner are trusted too.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sluice_trusted_writer') THEN
    BEGIN
      CREATE ROLE sluice_trusted_writer NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;  -- another database's migration made it (roles are cluster-wide)
    END;
  END IF;
END
$$;

-- 'signed': the public keys of each actor, judged as of each event's WAL
-- position like rules and roles (it is in the publication and the mirror).
CREATE TABLE sluice.actor_keys (
  actor text NOT NULL,
  key_id text NOT NULL,
  public_key bytea NOT NULL CONSTRAINT actor_keys_ed25519 CHECK (octet_length(public_key) = 32),
  PRIMARY KEY (actor, key_id)
);

-- The `sub` claim PostgREST and Supabase put in request.jwt.claims.
CREATE FUNCTION sluice.jwt_subject() RETURNS text
  LANGUAGE plpgsql STABLE AS $$
DECLARE
  claims text := nullif(current_setting('request.jwt.claims', true), '');
BEGIN
  IF claims IS NULL THEN
    RETURN NULL;
  END IF;
  BEGIN
    -- Only a string names someone: a number, an array or an object does not.
    IF jsonb_typeof(claims::jsonb -> 'sub') IS DISTINCT FROM 'string' THEN
      RETURN NULL;
    END IF;
    RETURN nullif(claims::jsonb ->> 'sub', '');
  EXCEPTION WHEN others THEN
    RETURN NULL;  -- claims that are not a JSON object name nobody
  END;
END
$$;

-- The authenticated identity of this session: sluice.actor if set and not
-- empty, else the `sub` claim of request.jwt.claims, else NULL. A database
-- may replace this function (CREATE OR REPLACE) to read another claim; the
-- guards call it. SQL, so that the guards inline it: with sluice.actor set,
-- no function is called at all (a plpgsql call cost a one-row insert 15%).
CREATE FUNCTION sluice.current_actor() RETURNS text
  LANGUAGE sql STABLE
  RETURN coalesce(nullif(current_setting('sluice.actor', true), ''), sluice.jwt_subject());

-- Whether `who` may write rows whose actor it chooses: a superuser, a member
-- of the table's owner, or a member of sluice_trusted_writer.
CREATE FUNCTION sluice.trusted_writer(who name, rel oid) RETURNS boolean
  LANGUAGE sql STABLE
  RETURN coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = who), false)
    OR pg_catalog.pg_has_role(who, (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = rel), 'MEMBER')
    OR pg_catalog.pg_has_role(who, 'sluice_trusted_writer', 'MEMBER');

-- The role the inserting statement runs as. The guard is SECURITY DEFINER
-- (a client needs nothing in schema sluice), where current_user is the
-- guard's owner; the `role` setting still holds the caller's SET ROLE (as
-- PostgREST switches roles), and without one the session's user is the
-- effective role.
CREATE FUNCTION sluice.inserting_role() RETURNS name
  LANGUAGE sql STABLE
  RETURN CASE WHEN current_setting('role') = 'none' THEN session_user ELSE current_setting('role')::name END;

-- The largest row a guard lets in, in bytes.
CREATE FUNCTION sluice.max_row_bytes() RETURNS bigint
  LANGUAGE sql STABLE
  RETURN coalesce((SELECT value::bigint FROM sluice.settings WHERE name = 'max_row_bytes'), 1048576);

-- The table of a source ('schema.table' as sluice.sources names it, case and all).
CREATE FUNCTION sluice.source_table(relation text) RETURNS regclass
  LANGUAGE sql STABLE
  RETURN (SELECT c.oid::regclass FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname || '.' || c.relname = relation AND c.relkind IN ('r', 'p') ORDER BY c.oid LIMIT 1);

-- A source's table and every partition under it (pg_partition_tree gives
-- nothing for a table that is not partitioned).
CREATE FUNCTION sluice.source_tables(relation text) RETURNS SETOF regclass
  LANGUAGE sql STABLE AS $$
  SELECT sluice.source_table(relation) WHERE sluice.source_table(relation) IS NOT NULL
  UNION ALL
  SELECT t.relid FROM pg_partition_tree(sluice.source_table(relation)) t WHERE t.level > 0
$$;

-- The name of a source's guard function.
CREATE FUNCTION sluice.guard_function(relation text) RETURNS text
  LANGUAGE sql IMMUTABLE
  RETURN 'sluice.' || quote_ident(CASE WHEN octet_length('guard:' || relation) <= 63 THEN 'guard:' || relation
                                       ELSE 'guard:' || md5(relation) END);

-- (Re)creates the 'session' guard of a registered source from its row in
-- sluice.sources: a BEFORE INSERT OR UPDATE trigger named sluice_guard,
-- ENABLE ALWAYS (it fires under session_replication_role = replica too), on
-- the table and, through it, on every partition present and future.
CREATE FUNCTION sluice.install_guard(source text) RETURNS void
  LANGUAGE plpgsql AS $$
DECLARE
  s sluice.sources;
  rel regclass;
  partitioned boolean;
  limits text := '';
  lengths text[] := '{}';
  col text;
  field text;
  scope_call text := 'NULL';
  body text;
  kept boolean;
BEGIN
  SELECT * INTO s FROM sluice.sources WHERE relation = source;
  rel := sluice.source_table(source);
  IF NOT FOUND OR rel IS NULL THEN
    RAISE EXCEPTION 'sluice.install_guard: % is not a registered source', source;
  END IF;
  SELECT c.relkind = 'p' INTO partitioned FROM pg_class c WHERE c.oid = rel;
  -- SPEC 8's limits at the door: no identity value over 1,024 bytes.
  FOREACH field IN ARRAY ARRAY['id', 'type', 'actor', 'scope', 'dedupe_key'] LOOP
    col := CASE field WHEN 'id' THEN s.id_column WHEN 'type' THEN s.event_type_column WHEN 'actor' THEN s.actor_column
                      WHEN 'scope' THEN s.scope_column ELSE s.dedupe_column END;
    CONTINUE WHEN col IS NULL;
    limits := limits || format(
      $f$
  IF octet_length(NEW.%1$I::text) > 1024 THEN
    RAISE EXCEPTION USING ERRCODE = '54000',
      MESSAGE = format('%2$s: %3$s is %%s bytes long; the limit is 1024', octet_length(NEW.%1$I::text));
  END IF;$f$, col, source, field);
    lengths := lengths || format('octet_length(NEW.%I::text)', col);
  END LOOP;
  IF s.scope_from IS NOT NULL THEN
    -- A partition's row has its own row type: the function takes the registered table's, matched by name.
    scope_call := format(CASE WHEN partitioned THEN '%s(jsonb_populate_record(NULL::%s, to_jsonb(NEW)))'
                              ELSE '%s(NEW)' END, s.scope_from, rel);
  END IF;
  body := format(
    $g$
CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
DECLARE
  actor text := sluice.current_actor();
  size bigint;
  proven text;
BEGIN
  -- One test for the common row (an identity, every value and the row
  -- small): plpgsql sets up each expression once per transaction, and for
  -- one-row transactions that setup is most of a guard's cost.
  IF actor IS NULL OR pg_column_size(NEW) > 1024 OR greatest(%6$s) > 1024 THEN
    IF actor IS NULL THEN
      IF sluice.trusted_writer(sluice.inserting_role(), TG_RELID) THEN
        RETURN NEW;  -- a trusted role with no identity keeps the row as written (the daemon's own limits apply)
      END IF;
      RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('%3$s: no authenticated actor (set sluice.actor or request.jwt.claims) for role %%s',
                         sluice.inserting_role());
    END IF;%2$s
    size := pg_column_size(NEW);
    -- pg_column_size counts a compressed value as stored: lz4 makes 50 MB
    -- of one letter 196 kB. What the WAL decoder and the daemon would hold
    -- is the value uncompressed: measure that (as text).
    IF size > 1024 THEN
      size := greatest(size, octet_length(NEW::text));
    END IF;
    IF size > sluice.max_row_bytes() THEN
      RAISE EXCEPTION USING ERRCODE = '54000',
        MESSAGE = format('%3$s: the row is %%s bytes; the limit is %%s (sluice.settings max_row_bytes)',
                         size, sluice.max_row_bytes());
    END IF;
  END IF;
  IF NEW.%4$I IS NULL OR NEW.%4$I::text = '' THEN
    NEW.%4$I := actor;
  ELSIF NEW.%4$I::text COLLATE "C" <> actor COLLATE "C" THEN
    RAISE EXCEPTION USING ERRCODE = '42501',
      MESSAGE = format('%3$s: the row names actor %%L, but the session''s actor is %%L', NEW.%4$I::text, actor);
  END IF;%5$s
  RETURN NEW;
END
$body$;
$g$,
    sluice.guard_function(source), limits, source, s.actor_column,
    CASE WHEN s.scope_from IS NULL OR s.scope_column IS NULL THEN '' ELSE format(
      $f$
  proven := %1$s;
  IF NEW.%2$I IS NULL OR NEW.%2$I::text = '' THEN
    NEW.%2$I := proven;
  ELSIF proven IS NULL OR NEW.%2$I::text COLLATE "C" <> proven COLLATE "C" THEN
    RAISE EXCEPTION USING ERRCODE = '42501',
      MESSAGE = format('%3$s: the row names scope %%L, but it belongs to scope %%L', NEW.%2$I::text, proven);
  END IF;$f$, scope_call, s.scope_column, source) END,
    array_to_string(lengths, ', '));
  -- Registered again with its guard in place all along (same function,
  -- enabled always): the rows since the first registration met it, so its fence stands.
  kept := s.guard_snapshot IS NOT NULL AND EXISTS (
    SELECT 1 FROM pg_trigger t WHERE t.tgrelid = rel AND t.tgname = 'sluice_guard' AND t.tgenabled = 'A'
      AND t.tgfoid = to_regprocedure(sluice.guard_function(source) || '()'));
  EXECUTE body;
  EXECUTE format('CREATE OR REPLACE TRIGGER sluice_guard BEFORE INSERT OR UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION %s()',
                 rel, sluice.guard_function(source));
  EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER sluice_guard', rel);
  -- The trigger took a lock that waits for every transaction writing the
  -- table: what committed before this snapshot never met the guard.
  IF NOT kept THEN
    UPDATE sluice.sources SET guard_snapshot = pg_current_snapshot(), guard_xid = pg_current_xact_id()
      WHERE relation = source;
  END IF;
END
$$;

-- Drops a source's guard (it is no longer a 'session' source).
CREATE FUNCTION sluice.drop_guard(source text) RETURNS void
  LANGUAGE plpgsql AS $$
DECLARE
  rel regclass := sluice.source_table(source);
BEGIN
  IF rel IS NOT NULL AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel AND tgname = 'sluice_guard') THEN
    EXECUTE format('DROP TRIGGER sluice_guard ON %s', rel);
  END IF;
  EXECUTE format('DROP FUNCTION IF EXISTS %s()', sluice.guard_function(source));
  UPDATE sluice.sources SET guard_snapshot = NULL, guard_xid = NULL WHERE relation = source;
END
$$;

-- A row's inserting transaction as a full (64-bit) transaction id: xmin is
-- 32 bits, and every xid a live row shows is within 2^31 of the current one.
CREATE FUNCTION sluice.full_xid(x xid) RETURNS xid8
  LANGUAGE sql STABLE
  RETURN (pg_snapshot_xmax(pg_current_snapshot())::text::bigint
          - ((pg_snapshot_xmax(pg_current_snapshot())::text::bigint % 4294967296 - x::text::bigint + 4294967296)
             % 4294967296))::text::xid8;

-- Per table of a 'session' source (the table and each partition): the
-- snapshot before which its rows never met the guard. A partition attached
-- after registration got its guard (a clone of the table's trigger) when it
-- was attached: its rows from transactions before that one never met it.
CREATE FUNCTION sluice.guard_fences(source text)
  RETURNS TABLE (tableoid oid, fence pg_snapshot, guard_xid xid8)
  LANGUAGE sql STABLE AS $$
  WITH s AS (SELECT * FROM sluice.sources WHERE relation = source AND actor_from = 'session'),
  root AS (SELECT sluice.source_table(source)::oid AS oid),
  tables AS (SELECT t::oid AS oid FROM sluice.source_tables(source) t)
  SELECT t.oid,
         CASE WHEN tg.oid IS NULL THEN NULL
              WHEN sluice.full_xid(tg.xmin) = s.guard_xid OR t.oid = (SELECT oid FROM root) THEN s.guard_snapshot
              ELSE (sluice.full_xid(tg.xmin)::text || ':' || sluice.full_xid(tg.xmin)::text || ':')::pg_snapshot END,
         s.guard_xid
  FROM tables t CROSS JOIN s LEFT JOIN pg_trigger tg ON tg.tgrelid = t.oid AND tg.tgname = 'sluice_guard'
$$;

-- Whether a row (its table and xmin) was written before its table's guard:
-- true for a row no guard ever saw (NULL fence: the guard is missing).
CREATE FUNCTION sluice.before_guard(fence pg_snapshot, guard_xid xid8, row_xmin xid) RETURNS boolean
  LANGUAGE sql STABLE
  RETURN fence IS NULL
    OR (sluice.full_xid(row_xmin) IS DISTINCT FROM guard_xid
        AND pg_visible_in_snapshot(sluice.full_xid(row_xmin), fence));

DROP FUNCTION sluice.add_source(text, text, text, text, text, text, text, text, interval);
-- Registers a source and adds its table to the publication, in one
-- transaction; a 'session' source also gets its guard.
CREATE FUNCTION sluice.add_source(
  relation text,
  actor_column text,
  event_type_column text DEFAULT NULL,
  event_type text DEFAULT NULL,
  id_column text DEFAULT 'id',
  dedupe_column text DEFAULT NULL,
  scope_column text DEFAULT NULL,
  publication text DEFAULT 'sluice',
  retain interval DEFAULT NULL,
  actor_from text DEFAULT 'session',
  scope_from text DEFAULT NULL,
  signature_column text DEFAULT NULL,
  key_column text DEFAULT NULL,
  payload_column text DEFAULT NULL,
  existing text DEFAULT 'deny'
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  rel regclass := to_regclass(relation);
  qualified text;
  scope_fn regprocedure;
  column_type text;
BEGIN
  IF rel IS NULL THEN
    RAISE EXCEPTION 'sluice.add_source: no table %', relation;
  END IF;
  SELECT n.nspname || '.' || c.relname INTO qualified
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
  IF add_source.actor_from NOT IN ('session', 'column', 'signed') THEN
    RAISE EXCEPTION 'sluice.add_source: actor_from is %; it takes session, column or signed', add_source.actor_from;
  END IF;
  IF add_source.scope_from IS NOT NULL THEN
    IF add_source.scope_column IS NULL THEN
      RAISE EXCEPTION 'sluice.add_source: scope_from needs scope_column';
    END IF;
    IF add_source.actor_from <> 'session' THEN
      RAISE EXCEPTION 'sluice.add_source: scope_from is applied by the session guard: it needs actor_from => ''session''';
    END IF;
    scope_fn := to_regprocedure(format('%s(%s)', add_source.scope_from, rel));
    IF scope_fn IS NULL THEN
      RAISE EXCEPTION 'sluice.add_source: scope_from % must be a function of one argument of type %', add_source.scope_from, qualified;
    END IF;
  END IF;
  IF add_source.actor_from = 'signed' THEN
    FOREACH column_type IN ARRAY ARRAY['signature_column', 'key_column', 'payload_column'] LOOP
      IF (CASE column_type WHEN 'signature_column' THEN add_source.signature_column
                           WHEN 'key_column' THEN add_source.key_column ELSE add_source.payload_column END) IS NULL THEN
        RAISE EXCEPTION 'sluice.add_source: actor_from => ''signed'' needs %', column_type;
      END IF;
    END LOOP;
    SELECT format_type(a.atttypid, NULL) INTO column_type FROM pg_attribute a
      WHERE a.attrelid = rel AND a.attname = add_source.signature_column AND NOT a.attisdropped;
    IF column_type IS DISTINCT FROM 'bytea' THEN
      RAISE EXCEPTION 'sluice.add_source: signature column % must be bytea (it is %)', add_source.signature_column, coalesce(column_type, 'missing');
    END IF;
    SELECT format_type(a.atttypid, NULL) INTO column_type FROM pg_attribute a
      WHERE a.attrelid = rel AND a.attname = add_source.payload_column AND NOT a.attisdropped;
    IF column_type IS NULL OR column_type NOT IN ('json', 'text', 'bytea') THEN
      RAISE EXCEPTION 'sluice.add_source: payload column % must be json, text or bytea (it is %): jsonb does not keep the text that was signed',
        add_source.payload_column, coalesce(column_type, 'missing');
    END IF;
  END IF;
  -- A generated column is computed after every BEFORE trigger: the guard
  -- could neither fill it nor judge what it becomes.
  IF add_source.actor_from = 'session' THEN
    SELECT string_agg(quote_ident(a.attname), ', ') INTO column_type FROM pg_attribute a
      WHERE a.attrelid = rel AND a.attname IN (add_source.actor_column, add_source.scope_column)
        AND a.attgenerated <> '' AND NOT a.attisdropped;
    IF column_type IS NOT NULL THEN
      RAISE EXCEPTION 'sluice.add_source: % of % is a generated column: the session guard cannot stamp or judge it (make it a plain column)',
        column_type, qualified;
    END IF;
  END IF;
  IF add_source.existing NOT IN ('deny', 'trust') THEN
    RAISE EXCEPTION 'sluice.add_source: existing is %; it takes deny or trust', add_source.existing;
  END IF;
  INSERT INTO sluice.sources AS s (relation, event_type_column, event_type, id_column, actor_column, dedupe_column,
                                   scope_column, retain, actor_from, scope_from, signature_column, key_column,
                                   payload_column, existing)
    VALUES (qualified, add_source.event_type_column, add_source.event_type, coalesce(add_source.id_column, 'id'),
            add_source.actor_column, add_source.dedupe_column, add_source.scope_column, add_source.retain,
            add_source.actor_from,
            (SELECT format('%I.%I', n.nspname, p.proname) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE p.oid = scope_fn),
            add_source.signature_column, add_source.key_column,
            add_source.payload_column, add_source.existing)
    ON CONFLICT ON CONSTRAINT sources_pkey DO UPDATE SET
      event_type_column = EXCLUDED.event_type_column, event_type = EXCLUDED.event_type,
      id_column = EXCLUDED.id_column, actor_column = EXCLUDED.actor_column,
      dedupe_column = EXCLUDED.dedupe_column, scope_column = EXCLUDED.scope_column, retain = EXCLUDED.retain,
      actor_from = EXCLUDED.actor_from, scope_from = EXCLUDED.scope_from,
      signature_column = EXCLUDED.signature_column, key_column = EXCLUDED.key_column,
      payload_column = EXCLUDED.payload_column, existing = EXCLUDED.existing;
  IF add_source.actor_from = 'session' THEN
    PERFORM sluice.install_guard(qualified);
  ELSE
    PERFORM sluice.drop_guard(qualified);
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                 WHERE p.pubname = add_source.publication AND pr.prrelid = rel) THEN
    EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', add_source.publication, rel);
  END IF;
END
$$;
