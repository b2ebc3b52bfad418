-- SPEC section 11: a ledger whose cost per event does not grow with history.
--
-- Ids of events arrive in no order, so every index keyed by them takes its
-- inserts on random leaf pages; once that index outgrows memory, each insert
-- after a checkpoint writes a full-page image. So the ledger is split into
-- partitions of at most SLUICE_LEDGER_PARTITION_EVENTS events: only the
-- newest ("hot") one takes inserts, and its indexes stay small. Older
-- partitions are sealed: nothing is inserted into them again. The daemon
-- keeps a Bloom filter of each sealed partition's ids and owned dedupe keys
-- (stored here, built once when the partition is sealed), so an event is
-- looked up in sealed partitions only when a filter says it may be there.
-- docs/ledger.md.
--
-- `sluice.event_log` stays the interface: it is now the partitioned table,
-- and every partition has its own index on (source, event_id), so a lookup
-- by (source, event_id) is still an index probe (one per partition).
--
-- Online: the existing ledger becomes partition 0 as it is, without copying
-- a row. Adding the partition column with a constant default writes nothing;
-- attaching reads the ledger once to check it.

ALTER TABLE sluice.event_log RENAME TO event_log_0;
ALTER INDEX sluice.event_log_pkey RENAME TO event_log_0_pkey;
ALTER INDEX sluice.event_log_dedupe_owner RENAME TO event_log_0_dedupe_owner;
ALTER INDEX sluice.event_log_dead RENAME TO event_log_0_dead;
ALTER INDEX sluice.event_log_commit_order RENAME TO event_log_0_commit_order;
ALTER INDEX sluice.event_log_backfilled RENAME TO event_log_0_backfilled;
ALTER TABLE sluice.event_log_0 ADD COLUMN part int NOT NULL DEFAULT 0;

-- The same columns, defaults, NOT NULLs and checks (by the same names: a
-- partition must have its parent's constraints).
CREATE TABLE sluice.event_log (LIKE sluice.event_log_0 INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
  PARTITION BY RANGE (part);
ALTER TABLE sluice.event_log ATTACH PARTITION sluice.event_log_0 FOR VALUES FROM (MINVALUE) TO (1);

-- One row per partition. The hot one has sealed_at NULL. The filters are
-- Bloom filters (LedgerFilter in SluiceCore) of a sealed partition's
-- ledger ids and of its owned dedupe keys; NULL until the daemon builds them.
CREATE TABLE sluice.ledger_partitions (
  part int PRIMARY KEY,
  created_at timestamptz NOT NULL DEFAULT now(),
  sealed_at timestamptz,
  events bigint,                  -- counted when sealed
  id_filter bytea,
  key_filter bytea
);
CREATE UNIQUE INDEX ledger_partitions_one_hot ON sluice.ledger_partitions ((true)) WHERE sealed_at IS NULL;
INSERT INTO sluice.ledger_partitions (part, sealed_at) VALUES (0, now());

-- Creates partition `n` of the ledger with the indexes every partition has.
CREATE FUNCTION sluice.ledger_create_partition(n int) RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, sluice AS $$
DECLARE
  t text := 'event_log_' || n;
BEGIN
  EXECUTE format('CREATE TABLE sluice.%I PARTITION OF sluice.event_log FOR VALUES FROM (%s) TO (%s)', t, n, n + 1);
  EXECUTE format('ALTER TABLE sluice.%I ADD PRIMARY KEY (source, event_id)', t);
  EXECUTE format('CREATE UNIQUE INDEX %I ON sluice.%I (sluice.dedupe_digest(event_type, actor, dedupe_key))
                  WHERE dedupe_key IS NOT NULL AND status IN (''applied'', ''rejected'', ''dead'')', t || '_dedupe_owner', t);
  EXECUTE format('CREATE INDEX %I ON sluice.%I (processed_at) WHERE status = ''dead''', t || '_dead', t);
  EXECUTE format('CREATE INDEX %I ON sluice.%I (source, commit_lsn, event_id) WHERE commit_lsn IS NOT NULL',
                 t || '_commit_order', t);
  EXECUTE format('CREATE INDEX %I ON sluice.%I (source, processed_at, event_id) WHERE commit_lsn IS NULL',
                 t || '_backfilled', t);
  INSERT INTO sluice.ledger_partitions (part) VALUES (n);
END
$$;
SELECT sluice.ledger_create_partition(1);

-- The partition that takes inserts. Every statement that inserts ledger rows
-- takes its partition from here, once (an InitPlan), after this shared lock:
-- sealing takes it exclusively, so no insert lands in a partition after its
-- filter was built.
CREATE FUNCTION sluice.ledger_hot_part() RETURNS int
  LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_advisory_xact_lock_shared(hashtext('sluice.ledger'));
  RETURN (SELECT part FROM sluice.ledger_partitions WHERE sealed_at IS NULL);
END
$$;
ALTER TABLE sluice.event_log ALTER COLUMN part SET DEFAULT sluice.ledger_hot_part();

-- Seals the hot partition if it holds at least `at_least` events and opens
-- the next one. Returns the sealed partition's number, or NULL. Waits for
-- every transaction inserting ledger rows to end, and holds off new ones
-- until it commits.
CREATE FUNCTION sluice.ledger_seal(at_least bigint) RETURNS int
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, sluice AS $$
DECLARE
  hot int;
  n bigint;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext('sluice.ledger'));
  SELECT part INTO hot FROM sluice.ledger_partitions WHERE sealed_at IS NULL;
  EXECUTE format('SELECT count(*) FROM sluice.%I', 'event_log_' || hot) INTO n;
  IF n < at_least THEN
    RETURN NULL;
  END IF;
  UPDATE sluice.ledger_partitions SET sealed_at = now(), events = n WHERE part = hot;
  PERFORM sluice.ledger_create_partition(hot + 1);
  RETURN hot;
END
$$;

-- Which of these events the ledger has, by index probes whatever the
-- planner's statistics say (an ANALYZEd empty ledger included): a hash or
-- merge join, or a sequential scan, would read the whole ledger for each
-- batch, and a backfill would go quadratic. The settings it needs are pinned
-- here, whatever the database's or role's defaults. It looks in partitions
-- from `from_part` on and before `before_part` (NULL: no bound): the
-- daemon's filters cleared the others. Returns the ordinals of the events found.
CREATE FUNCTION sluice.ledger_seen(sources text[], ids text[], synthetic bool[], from_part int, before_part int)
  RETURNS SETOF bigint
  LANGUAGE plpgsql STABLE SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
           SET enable_bitmapscan = off SET enable_indexscan = on SET enable_nestloop = on
           SET search_path = pg_catalog, sluice AS $$
BEGIN
  RETURN QUERY EXECUTE format($q$
    SELECT k.i FROM unnest($1, $2, $3) WITH ORDINALITY AS k(source, event_id, synthetic, i)
    WHERE EXISTS (SELECT 1 FROM sluice.event_log l
                  WHERE %s AND l.source = k.source
                    AND l.event_id = CASE WHEN k.synthetic THEN k.event_id ELSE sluice.ledger_id(k.event_id) END)
    $q$, concat_ws(' AND ', 'true', 'l.part >= ' || from_part, 'l.part < ' || before_part))
    USING sources, ids, synthetic;
END
$$;

-- The same for (event, partition) pairs: each event looked up in the one
-- partition named beside it (the one whose filter may hold it). The
-- partition is pruned at run time, row by row.
CREATE FUNCTION sluice.ledger_seen_in(sources text[], ids text[], synthetic bool[], parts int[])
  RETURNS SETOF bigint
  LANGUAGE plpgsql STABLE SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
           SET enable_bitmapscan = off SET enable_indexscan = on SET enable_nestloop = on
           SET search_path = pg_catalog, sluice AS $$
BEGIN
  RETURN QUERY
    SELECT k.i FROM unnest(sources, ids, synthetic, parts) WITH ORDINALITY AS k(source, event_id, synthetic, part, i)
    WHERE EXISTS (SELECT 1 FROM sluice.event_log l
                  WHERE l.part = k.part AND l.source = k.source
                    AND l.event_id = CASE WHEN k.synthetic THEN k.event_id ELSE sluice.ledger_id(k.event_id) END);
END
$$;

-- For writers other than the daemon that seals (`sluice backfill`): in the
-- transaction that inserted these ledger rows, after their inserts took the
-- hot partition under the shared lock, raises unique_violation if a sealed
-- partition holds one of the events, or an owner of one of the keys the
-- rows claim. A partition sealed between such a writer's lookups and its
-- insert would otherwise let an event in twice, or a key have two owners:
-- uniqueness is per partition. The writer then looks everything up again.
CREATE FUNCTION sluice.ledger_check_sealed(sources text[], ids text[], synthetic bool[], types text[],
                                           actors text[], keys text[])
  RETURNS void
  LANGUAGE plpgsql VOLATILE SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
           SET enable_bitmapscan = off SET enable_indexscan = on SET enable_nestloop = on
           SET search_path = pg_catalog, sluice AS $$
DECLARE
  hot int := sluice.ledger_hot_part();
BEGIN
  IF EXISTS (SELECT 1 FROM sluice.ledger_seen(sources, ids, synthetic, NULL, hot))
     OR EXISTS (SELECT 1 FROM unnest(types, actors, keys) AS k(event_type, actor, dedupe_key)
                WHERE k.dedupe_key IS NOT NULL
                  AND EXISTS (SELECT 1 FROM sluice.event_log l
                              WHERE l.part < hot
                                AND sluice.dedupe_digest(l.event_type, l.actor, l.dedupe_key)
                                    = sluice.dedupe_digest(k.event_type, k.actor, k.dedupe_key)
                                AND l.dedupe_key IS NOT NULL AND l.status IN ('applied', 'rejected', 'dead')))
  THEN
    RAISE EXCEPTION USING ERRCODE = 'unique_violation',
      MESSAGE = 'a sealed ledger partition already holds one of these events or keys';
  END IF;
END
$$;

-- Who owns these (type, actor, dedupe key), by index probes as above: the
-- ordinal of each owned one and its owner's 'source/event_id'. `part` as above.
CREATE FUNCTION sluice.ledger_owners(types text[], actors text[], keys text[], part int)
  RETURNS TABLE (i bigint, owner text)
  LANGUAGE plpgsql STABLE SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
           SET enable_bitmapscan = off SET enable_indexscan = on SET enable_nestloop = on
           SET search_path = pg_catalog, sluice AS $$
BEGIN
  RETURN QUERY EXECUTE format($q$
    SELECT k.i, o.owner
    FROM unnest($1, $2, $3) WITH ORDINALITY AS k(event_type, actor, dedupe_key, i)
    CROSS JOIN LATERAL (
      SELECT l.source || '/' || l.event_id AS owner FROM sluice.event_log l
      WHERE %s AND sluice.dedupe_digest(l.event_type, l.actor, l.dedupe_key)
              = sluice.dedupe_digest(k.event_type, k.actor, k.dedupe_key)
        AND l.dedupe_key IS NOT NULL AND l.status IN ('applied', 'rejected', 'dead')
      LIMIT 1) o
    $q$, CASE WHEN part IS NULL THEN 'true' ELSE 'l.part >= ' || part END)
    USING types, actors, keys;
END
$$;
