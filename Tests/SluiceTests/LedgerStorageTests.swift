import Foundation
import Sluice
import SluicePostgres
import Testing

/// SPEC 11: the ledger in partitions, sealed ones asked through their
/// filters; replays and dedupe keys across them; the migration from one
/// table; a backfill whose plan cannot go quadratic.
@Suite struct LedgerStorageTests {
  static func partitions(_ db: TestDatabase) throws -> (sealed: Int, filtered: Int) {
    let row = try db.sql(
      "SELECT count(*) FILTER (WHERE sealed_at IS NOT NULL), count(id_filter) FROM sluice.ledger_partitions"
    ).rows[0]
    return (Int(row[0] ?? "") ?? -1, Int(row[1] ?? "") ?? -1)
  }

  /// 250 events in partitions of 100: two sealed. Ids of sealed events
  /// inserted again (their rows deleted by retention) are replays, their
  /// dedupe keys stay owned, after a restart too; new events apply.
  @Test func replaysAndDedupeKeysHoldAcrossSealedPartitionsAndRetention() throws {
    let db = try TestDatabase("ledger_sealed")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann", "bob"])
    let environment = ["SLUICE_LEDGER_PARTITION_EVENTS": "100", "SLUICE_RETENTION_INTERVAL_S": "0"]
    var daemon = try startDaemon(db, environment)
    for chunk in 0..<5 {
      try XPFixture.insert(
        db,
        (0..<50).map { i in
          let n = chunk * 50 + i
          return ("e\(n)", n % 2 == 0 ? "ann" : "bob", "award", 1, n % 10 == 0 ? "key\(n)" : nil)
        })
      // One chunk at a time, so that the partitions split at 100 and 200.
      #expect(
        try eventually(30, "\((chunk + 1) * 50) ledger rows") { try XPFixture.ledgerCount(db) == (chunk + 1) * 50 })
    }
    // Sealed at 100 events or more (a partition is sealed between batches): at least two now, with filters.
    #expect(
      try eventually(10, "two sealed partitions with events and filters") {
        try db.scalar(
          """
          SELECT count(*) FROM sluice.ledger_partitions
          WHERE sealed_at IS NOT NULL AND events >= 100 AND id_filter IS NOT NULL AND key_filter IS NOT NULL
          """) == "2"
      })
    #expect(daemon.standardError.contains("sealed a ledger partition"), "\(daemon.standardError)")
    #expect(try XPFixture.totals(db) == ["ann": 125, "bob": 125])
    let sealedPart = "(SELECT part FROM sluice.ledger_partitions WHERE sealed_at IS NOT NULL AND events > 0)"
    #expect(try db.scalar("SELECT part FROM sluice.event_log WHERE event_id = 'e0'") == "1")
    #expect(
      try db.scalar(
        "SELECT bool_and(part IN \(sealedPart)) FROM sluice.event_log WHERE event_id IN ('e0', 'e10', 'e90')") == "t")

    // Retention deletes every final row, sealed partitions' included.
    try db.sql("UPDATE sluice.sources SET retain = '0 seconds' WHERE relation = 'xp.actions'")
    try RetentionTests.caughtUp(db)
    #expect(try RetentionTests.compact(db) == "xp.actions: deleted 250 rows")

    // A client syncs old actions again: replays, whichever partition holds them.
    try XPFixture.insert(db, [("e0", "ann", "award", 7, nil), ("e150", "ann", "award", 7, nil)])
    // Keys owned in sealed partitions (key0, key90) and in the newest (key240); bob does not own ann's key0.
    try XPFixture.insert(
      db,
      [
        ("n1", "ann", "award", 3, "key0"), ("n2", "ann", "award", 3, "key90"), ("n3", "ann", "award", 3, "key240"),
        ("n4", "bob", "award", 3, "key0"),
      ])
    #expect(try eventually(20, "the new events") { try XPFixture.ledgerCount(db) == 254 })
    var statuses = try XPFixture.statuses(db)
    #expect(statuses["n1"] == "duplicate" && statuses["n2"] == "duplicate" && statuses["n3"] == "duplicate")
    #expect(statuses["n4"] == "applied")
    #expect(try XPFixture.totals(db) == ["ann": 125, "bob": 128])

    // After a restart the filters come from the table, not from memory.
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    daemon = try startDaemon(db, environment)
    try db.sql("DELETE FROM xp.actions WHERE id IN ('e0', 'n4')")
    try XPFixture.insert(
      db, [("e0", "ann", "award", 9, nil), ("n4", "bob", "award", 9, nil), ("n5", "ann", "award", 9, "key10")])
    #expect(try eventually(20, "n5") { try XPFixture.statuses(db)["n5"] != nil })
    statuses = try XPFixture.statuses(db)
    #expect(statuses["n5"] == "duplicate")
    #expect(try XPFixture.ledgerCount(db) == 255)
    #expect(try XPFixture.totals(db) == ["ann": 125, "bob": 128])
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  /// Ids the filters cannot hold as written (client ids that look like the
  /// ledger's digests or its own ids, an id over 1,024 bytes stored as its
  /// digest) and look-alike Unicode, synced again after their rows were
  /// deleted; and a sealed partition left without filters (its sealer died
  /// first) and one whose filter is damaged, which the next daemon builds
  /// again before it streams.
  @Test func hostileIdsAcrossSealedPartitionsAndASealerThatDiedBeforeItsFilters() throws {
    let db = try TestDatabase("ledger_hostile")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    let environment = ["SLUICE_LEDGER_PARTITION_EVENTS": "100", "SLUICE_RETENTION_INTERVAL_S": "0"]
    let hostile = ["sha256:abc", "sluice:null-id@0/1", String(repeating: "x", count: 1100), "jos\u{e9}"]
    var daemon = try startDaemon(db, environment)
    try XPFixture.insert(db, (hostile + (0..<96).map { "h\($0)" }).map { ($0, "ann", "award", 1, nil) })
    #expect(try eventually(20, "100 ledger rows") { try XPFixture.ledgerCount(db) == 100 })
    #expect(
      try eventually(10, "a sealed partition with filters") {
        try db.scalar("SELECT count(*) FROM sluice.ledger_partitions WHERE events = 100 AND id_filter IS NOT NULL")
          == "1"
      })
    try XPFixture.insert(db, [("hot1", "ann", "award", 1, nil)])
    #expect(try eventually(20, "hot1") { try XPFixture.ledgerCount(db) == 101 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    // Sealed by someone who died before building the filters.
    #expect(try db.scalar("SELECT sluice.ledger_seal(1)") != nil)
    #expect(
      try db.scalar("SELECT count(*) FROM sluice.ledger_partitions WHERE sealed_at IS NOT NULL AND id_filter IS NULL")
        == "1")
    // And the first partition's filter damaged on disk (its magic alone).
    try db.sql("UPDATE sluice.ledger_partitions SET id_filter = '\\x534c4231' WHERE events = 100")

    try db.sql("DELETE FROM xp.actions")
    try XPFixture.insert(db, (hostile + ["hot1", "h5", "jose\u{301}"]).map { ($0, "ann", "award", 5, nil) })
    daemon = try startDaemon(db, environment)
    // Both built before streaming: the one never built and the damaged one.
    #expect(
      daemon.standardError.components(separatedBy: "built the filters of a sealed ledger partition").count == 3,
      "\(daemon.standardError)")
    #expect(
      try db.scalar(
        "SELECT count(*) FROM sluice.ledger_partitions WHERE sealed_at IS NOT NULL AND octet_length(id_filter) > 13"
      ) == "3")
    // Asked in SQL: Swift's String equality would take the composed josé for it.
    #expect(
      try eventually(20, "the decomposed josé") {
        try db.scalar("SELECT status FROM sluice.event_log WHERE event_id = $1", ["jose\u{301}"]) == "applied"
      })
    let others = try db.sql(
      "SELECT left(event_id, 20), status, reason, part FROM sluice.event_log WHERE event_id !~ '^h[0-9]'"
    ).rows
    #expect(try XPFixture.ledgerCount(db) == 102, "\(others)")
    // 99 applied (the over-long id was rejected), hot1, and the one new event.
    #expect(try XPFixture.totals(db) == ["ann": 105])
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  /// Every event a filter positive (a sealed partition whose stored filters
  /// say "maybe" to everything), while batches are sent ahead in one
  /// pipeline: the sealed lookups go on a session of their own. (On the
  /// pipelined session they failed: "synchronous command execution
  /// functions are not allowed in pipeline mode".)
  @Test func filterPositivesDoNotStopThePipeline() throws {
    let db = try TestDatabase("ledger_positives")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    let maybe = "\\x534c4231" + "07" + "0000000000000200" + String(repeating: "ff", count: 64)
    try db.sql("UPDATE sluice.ledger_partitions SET id_filter = '\(maybe)', key_filter = '\(maybe)' WHERE part = 0")
    try createSlot(db)
    try db.sql(
      (0..<50).map { t in
        """
        INSERT INTO xp.actions (id, user_id, type, payload, dedupe_key)
        SELECT 'p\(t)-' || g, 'ann', 'award', '{"xp": 1}', CASE WHEN g % 10 = 0 THEN 'k\(t)-' || g END
        FROM generate_series(1, 100) g;
        """
      }.joined())
    let daemon = try startDaemon(db, ["SLUICE_BATCH_SIZE": "200"])
    #expect(try eventually(60, "5,000 events") { try XPFixture.ledgerCount(db) == 5000 })
    #expect(try XPFixture.totals(db) == ["ann": 5000])
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(!daemon.standardError.contains("connection lost"), "\(daemon.standardError)")
  }

  /// The first run's backfill looks the ledger up by index whatever the
  /// statistics say. With the ledger ANALYZEd while empty, the anti join
  /// it used to plan once scanned the whole ledger for each row. The
  /// database's defaults turn index scans and nested loops off: the lookups
  /// pin what they need.
  @Test func backfillProbesTheLedgerByIndexOnAnAnalyzedEmptyLedger() throws {
    let db = try TestDatabase("ledger_backfill_plan")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try db.sql(
      """
      INSERT INTO xp.actions (id, user_id, type, payload)
      SELECT 'b' || lpad(g::text, 6, '0'), 'ann', 'award', '{"xp": 1}' FROM generate_series(1, 5000) g;
      ANALYZE sluice.event_log;
      """)
    let name = String(db.url.split(separator: "/").last ?? "")
    try db.sql("ALTER DATABASE \(PGConnection.quoteIdentifier(name)) SET enable_indexscan = off")
    try db.sql("ALTER DATABASE \(PGConnection.quoteIdentifier(name)) SET enable_nestloop = off")
    let scans = {
      try db.sql("SELECT pg_stat_force_next_flush()")
      return Int(
        try db.scalar(
          "SELECT coalesce(sum(seq_scan), 0) FROM pg_stat_user_tables WHERE schemaname = 'sluice' AND relname LIKE 'event_log%'"
        ) ?? "") ?? -1
    }
    let before = try scans()
    try createSlot(db, ["SLUICE_BATCH_SIZE": "100"])
    #expect(try XPFixture.ledgerCount(db) == 5000)
    #expect(try XPFixture.totals(db) == ["ann": 5000])
    // The daemon's own counts and filter builds read a partition whole, a few times; 5,000 rows would be 5,000 scans.
    #expect(try eventually(10, "the daemon's statistics") { try scans() - before >= 1 })
    let during = try scans() - before
    #expect(during < 50, "sequential scans of the ledger during the backfill: \(during)")
  }

  /// The first run's backfill lets go of its snapshot before it applies
  /// anything: held, it kept every row version the handlers left behind
  /// (the game's per-user totals grew chains of versions that each update
  /// walked, and the backfill went quadratic). Nor does the walsender that
  /// exported it. A handler counts the sessions holding a snapshot while
  /// it runs.
  @Test func theBackfillHoldsNoSnapshotWhileItApplies() throws {
    let db = try TestDatabase("ledger_backfill_snapshot")
    try XPFixture.install(db)
    try XPFixture.handler(
      db, "probe",
      """
      BEGIN
        INSERT INTO xp.totals VALUES (e->>'actor', (SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND backend_xmin IS NOT NULL
            AND (application_name = 'sluice-backfill' OR backend_type = 'walsender')))
        ON CONFLICT (user_id) DO UPDATE SET xp = xp.totals.xp + EXCLUDED.xp;
      END
      """)
    try db.sql(
      "INSERT INTO xp.actions (id, user_id, type) SELECT 'p' || g, 'ann', 'probe' FROM generate_series(1, 300) g")
    try createSlot(db, ["SLUICE_BATCH_SIZE": "100"])
    #expect(try XPFixture.ledgerCount(db) == 300)
    #expect(try XPFixture.totals(db) == ["ann": 0], "events applied while the backfill's reader held a snapshot")
  }

  /// Found by review: `sluice backfill` looks its rows up, then the daemon
  /// commits one of them and seals the partition, then the backfill inserts
  /// into the next one, where no unique index sees the first. Simulated in
  /// one transaction: the handler of the batch's first row writes the second
  /// row's ledger row and seals, once. The backfill's insert must notice.
  @Test func aPartitionSealedBetweenABackfillsLookupAndItsInsertLetsNothingInTwice() throws {
    let db = try TestDatabase("ledger_seal_race")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try db.sql("CREATE SEQUENCE xp.once")
    try XPFixture.handler(
      db, "sealer",
      """
      BEGIN
        IF nextval('xp.once') = 1 THEN
          INSERT INTO sluice.event_log (source, event_id, event_type, actor, status, attempts)
            VALUES ('xp.actions', 'x1', 'award', 'ann', 'applied', 1);
          PERFORM sluice.ledger_seal(0);
        END IF;
      END
      """)
    try XPFixture.insert(db, [("s1", "ann", "sealer", 1, nil), ("x1", "ann", "award", 5, nil)])
    let (status, _, errors) = try runCommand(db, ["backfill", "xp.actions"])
    #expect(status == 0, "\(errors)")
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE event_id = 'x1'") == "1")
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE event_id = 's1'") == "1")
    #expect(try db.scalar("SELECT nextval('xp.once')")! > "1", "the race was staged")
  }

  /// Found by review: the backfill's copy must not follow the source's
  /// columns after it was taken. A handler renames the actor column while
  /// the copy is being applied, one row per batch: the rows after it are
  /// still the rows as they were (applied, not rejected for a missing column).
  @Test func theBackfillsCopyKeepsTheColumnsItWasTakenWith() throws {
    let db = try TestDatabase("ledger_backfill_columns")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try XPFixture.handler(db, "renamer", "BEGIN ALTER TABLE xp.actions RENAME COLUMN user_id TO uid; END")
    try XPFixture.insert(
      db, [("r1", "ann", "renamer", 1, nil), ("r2", "ann", "award", 5, nil), ("r3", "ann", "award", 5, nil)])
    let (status, _, errors) = try runCommand(db, ["backfill", "xp.actions"], ["SLUICE_BATCH_SIZE": "1"])
    #expect(status == 0, "\(errors)")
    #expect(try XPFixture.statuses(db) == ["r1": "applied", "r2": "applied", "r3": "applied"])
    #expect(try XPFixture.totals(db) == ["ann": 10])
  }

  /// SPEC 11: the migration from one ledger table keeps every row of a
  /// ledger of 1,000,000 (as partition 0, not copied), replays and keys
  /// recorded before it still hold, and a migrate killed while it waits
  /// leaves the old ledger as it was.
  @Test func migrationKeepsAMillionRowLedgerAndSurvivesAKill() throws {
    let db = try TestDatabase("ledger_migration")
    // Install migrations 1-6 only, as a ledger written by the release before partitions.
    try db.sql(
      """
      CREATE SCHEMA sluice;
      CREATE TABLE sluice.schema_migrations (version int PRIMARY KEY, name text NOT NULL,
                                             applied_at timestamptz NOT NULL DEFAULT now());
      INSERT INTO sluice.schema_migrations (version, name) VALUES (7, 'held back by the test'), (8, 'held back too');
      """)
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    #expect(try db.scalar("SELECT relkind FROM pg_class WHERE oid = 'sluice.event_log'::regclass") == "r")
    try db.sql(
      """
      INSERT INTO sluice.event_log (source, event_id, event_type, actor, dedupe_key, status, reason, attempts,
                                    commit_lsn, committed_at, event)
      SELECT 'xp.actions', 'old' || g, 'award', 'ann', CASE WHEN g % 100 = 0 THEN 'k' || g END,
             CASE WHEN g % 1000 = 1 THEN 'dead' ELSE 'applied' END, NULL, 1, '0/1'::pg_lsn + g,
             now() - interval '1 year', CASE WHEN g % 1000 = 1 THEN '{"id": "x"}'::jsonb END
      FROM generate_series(1, 1000000) g;
      DELETE FROM sluice.schema_migrations WHERE version IN (7, 8);  -- 009 (identity) touches no ledger
      """)
    let fingerprint =
      "SELECT count(*), sum(hashtext(source || event_id || status || coalesce(dedupe_key, '') || commit_lsn::text)) FROM sluice.event_log"
    let before = try db.sql(fingerprint).rows

    // Killed while it waits for a lock: nothing of it stays.
    let blocker = try PGConnection(conninfo: db.url)
    defer { blocker.close() }
    try blocker.simpleQuery("BEGIN; LOCK TABLE sluice.event_log IN ACCESS SHARE MODE")
    let migrate = try sluice(db, ["migrate"])
    #expect(
      try eventually(20, "the migration to wait for the lock") {
        try db.scalar(
          "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
          == "1"
      })
    migrate.signal(SIGKILL)
    _ = migrate.waitForExit()
    try blocker.simpleQuery("COMMIT")
    #expect(
      try eventually(20, "the killed migration's backend to end") {
        try db.scalar(
          "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'"
        ) == "0"
      })
    #expect(try db.scalar("SELECT relkind FROM pg_class WHERE oid = 'sluice.event_log'::regclass") == "r")
    #expect(try db.scalar("SELECT max(version) FROM sluice.schema_migrations WHERE version < 9") == "6")

    let (status, _, errors) = try runCommand(db, ["migrate"])
    #expect(status == 0, "\(errors)")
    #expect(try db.scalar("SELECT relkind FROM pg_class WHERE oid = 'sluice.event_log'::regclass") == "p")
    #expect(try db.sql(fingerprint).rows == before)
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE part = 0") == "1000000")
    #expect(try Self.partitions(db) == (1, 0))
    // A dead event keeps every column.
    #expect(try db.scalar("SELECT event->>'id' FROM sluice.event_log WHERE event_id = 'old1'") == "x")

    // The daemon builds partition 0's filters once; old ids are replays, old keys owned.
    let daemon = try startDaemon(db, ["SLUICE_LEDGER_PARTITION_EVENTS": "1000"])
    #expect(daemon.standardError.contains("built the filters of a sealed ledger partition"))
    #expect(try Self.partitions(db) == (1, 1))
    try XPFixture.insert(
      db,
      [
        ("old5", "ann", "award", 5, nil), ("old999999", "ann", "award", 5, nil), ("new1", "ann", "award", 5, "k500"),
        ("new2", "ann", "award", 5, "k501"),
      ])
    #expect(try eventually(20, "the new events") { try XPFixture.ledgerCount(db) == 1_000_002 })
    let statuses = try db.sql("SELECT event_id, status FROM sluice.event_log WHERE event_id IN ('new1', 'new2')").rows
    #expect(
      Dictionary(uniqueKeysWithValues: statuses.map { ($0[0] ?? "", $0[1] ?? "") }) == [
        "new1": "duplicate", "new2": "applied",
      ])
    #expect(try XPFixture.totals(db) == ["ann": 5])
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }
}
