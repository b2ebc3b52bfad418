import Foundation
import Sluice
import SluicePostgres
import Testing

/// SPEC section 8, second half: events that cannot change, verdicts that
/// cannot be fooled, slots that cannot be lost. One test per item of the
/// issue, each its scenario.
@Suite(.serialized) struct ChangingWorldTests {
  /// 1. `dlq retry` runs the event as it was recorded, not the row as it is now.
  @Test func dlqRetryRunsTheEventAsRecordedNotTheRowAsItIsNow() throws {
    let db = try TestDatabase("dlqrecorded")
    try XPFixture.install(db)
    try createSlot(db)
    // 'later' is allowed for anyone but has no handler yet: both go dead.
    try XPFixture.insert(db, [("a", "alice", "later", 10, nil), ("b", "bob", "later", 5, nil)])
    var daemon = try startDaemon(db)
    #expect(try eventually { try XPFixture.statuses(db) == ["a": "dead", "b": "dead"] })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    // The client rewrites alice's row and deletes bob's; then the handler is deployed.
    try db.sql(
      """
      UPDATE xp.actions SET user_id = 'bob', payload = '{"xp": 9000}' WHERE id = 'a';
      DELETE FROM xp.actions WHERE id = 'b';
      INSERT INTO sluice.handlers VALUES ('later', 'xp.award');
      """)
    daemon = try startDaemon(db)  // sees the handler's registration
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    let (status, output, errors) = try runCommand(db, ["dlq", "retry", "--all"])
    #expect(status == 0, "\(output) \(errors)")
    #expect(try XPFixture.statuses(db) == ["a": "applied", "b": "applied"])
    #expect(try XPFixture.totals(db) == ["alice": 10, "bob": 5])
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE event IS NOT NULL") == "0")
  }

  /// 2. A daemon that takes the slot back must not judge by the policy it had before it lost it.
  @Test func aDaemonThatRetakesTheSlotReloadsThePolicy() throws {
    let db = try TestDatabase("retake")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann", "mallory"])
    try createSlot(db)
    let first = try startDaemon(db)
    let second = try sluice(db, ["run"])
    #expect(try eventually(10, "the second daemon to stand by") { second.standardError.contains("standing by") })
    // The first daemon pauses; its sessions are ended, so the second takes over.
    first.signal(SIGSTOP)
    try db.sql(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'sluice' AND pid <> pg_backend_pid()"
    )
    #expect(try eventually(20, "the second daemon to stream") { second.standardError.contains("info streaming") })
    first.signal(SIGCONT)
    #expect(try eventually(20, "the first daemon to stand by again") { first.standardError.contains("standing by") })
    // Mallory's role is revoked while the second streams.
    try db.sql("DELETE FROM sluice.actor_roles WHERE actor = 'mallory'")
    try XPFixture.insert(db, [("marker", "ann", "award", 1, nil)])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 1 })
    second.signal(SIGKILL)
    _ = second.waitForExit()
    let streams = first.standardError.components(separatedBy: "info streaming").count - 1
    #expect(
      try eventually(20, "the first daemon to take over") {
        first.standardError.components(separatedBy: "info streaming").count - 1 > streams
      }, "\(first.standardError.suffix(2000))")
    try XPFixture.insert(db, [("m", "mallory", "award", 100, nil)])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 2 })
    first.signal(SIGTERM)
    #expect(first.waitForExit() == 0)
    #expect(try XPFixture.statuses(db)["m"] == "denied")
    #expect(try XPFixture.totals(db) == ["ann": 1])
  }

  /// 3. The handler is the one in force at the event's position, within a transaction too.
  @Test func theHandlerIsChosenAsOfTheEventsPosition() throws {
    let db = try TestDatabase("handlerpos")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    let daemon = try startDaemon(db)
    try db.sql(
      """
      BEGIN;
      INSERT INTO xp.actions (id, user_id, type, payload) VALUES ('before-delete', 'ann', 'award', '{"xp": 3}');
      DELETE FROM sluice.handlers WHERE event_type = 'award';
      COMMIT;
      BEGIN;
      INSERT INTO xp.actions (id, user_id, type, payload) VALUES ('before-insert', 'ann', 'award', '{"xp": 5}');
      INSERT INTO sluice.handlers VALUES ('award', 'xp.award');
      INSERT INTO xp.actions (id, user_id, type, payload) VALUES ('after-insert', 'ann', 'award', '{"xp": 7}');
      COMMIT;
      """)
    #expect(try eventually { try XPFixture.ledgerCount(db) == 3 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(
      try XPFixture.statuses(db) == ["before-delete": "applied", "before-insert": "dead", "after-insert": "applied"])
    #expect(try XPFixture.totals(db) == ["ann": 10])
  }

  /// 4. Each slot keeps its own policy mirror.
  @Test func eachSlotHasAMirrorOfItsOwn() throws {
    let db = try TestDatabase("twoslots")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    let slotA = db.slot + "_a"
    let slotB = db.slot + "_b"
    try createSlot(db, ["SLUICE_SLOT": slotA])
    try XPFixture.grant(db, ["zed"])  // after A's position: only B's mirror has it
    try createSlot(db, ["SLUICE_SLOT": slotB])
    func grants(_ slot: String) throws -> String? {
      try db.scalar(
        "SELECT string_agg(row->>'actor', ',' ORDER BY row->>'actor') FROM sluice.policy_mirror WHERE slot = $1 AND table_name = 'actor_roles'",
        [slot])
    }
    #expect(try grants(slotA) == "ann")
    #expect(try grants(slotB) == "ann,zed")
    // A resumes from its own position: zed's grant reaches it through the stream.
    try XPFixture.insert(db, [("z", "zed", "award", 2, nil)])
    let daemon = try startDaemon(db, ["SLUICE_SLOT": slotA])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 1 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try grants(slotA) == "ann,zed")
    #expect(try XPFixture.statuses(db) == ["z": "applied"])
  }

  /// 5. A replay after a crash is judged by the policy at its position, not by a mirror written further on.
  @Test func aReplayIsJudgedByThePolicyAtItsPosition() throws {
    let db = try TestDatabase("mirrorahead")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try createSlot(db)
    try db.sql("DELETE FROM sluice.sources WHERE relation = 'xp.actions'")  // the table stays published
    var daemon = try startDaemon(db, ["SLUICE_BATCH_SIZE": "200"])
    try db.sql(
      """
      BEGIN;
      INSERT INTO xp.actions (id, user_id, type, payload) VALUES ('x', 'ann', 'award', '{"xp": 1000000}');
      SELECT sluice.add_source('xp.actions', actor_column => 'user_id', event_type_column => 'type',
                               dedupe_column => 'dedupe_key');
      INSERT INTO xp.actions (id, user_id, type, payload)
        SELECT 'r' || g, 'ann', 'award', '{"xp": 1}' FROM generate_series(1, 20000) g;
      COMMIT;
      """)
    #expect(try eventually(60, "part of the transaction applied") { try XPFixture.ledgerCount(db) >= 1000 })
    daemon.signal(SIGKILL)
    _ = daemon.waitForExit()
    let before = try XPFixture.ledgerCount(db)
    print("killed with \(before) of 20,000 rows in the ledger")
    daemon = try startDaemon(db, ["SLUICE_BATCH_SIZE": "200"])
    #expect(try eventually(90, "20,000 ledger rows") { try XPFixture.ledgerCount(db) == 20_000 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(before < 20_000, "the kill came mid-transaction")
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE event_id = 'x'") == "0")
    #expect(try XPFixture.totals(db) == ["ann": 20_000])
  }

  /// 6. The daemon's sessions pin what its guarantees rest on, and keep the URL's own options.
  @Test func sessionSettingsArePinnedWhateverTheDatabaseSays() throws {
    let db = try TestDatabase("pinned")
    try XPFixture.install(db)
    let name = String(db.url.split(separator: "/").last ?? "")
    try db.sql(
      """
      CREATE TABLE xp.seen (sync text, isolation text, work_mem text, search_path text);
      """)
    try XPFixture.handler(
      db, "observe",
      """
      BEGIN
        PERFORM pg_sleep(0.2);
        INSERT INTO xp.seen VALUES (current_setting('synchronous_commit'), current_setting('transaction_isolation'),
                                    current_setting('work_mem'), current_setting('search_path'));
      END
      """)
    try db.sql(
      """
      ALTER DATABASE \(PGConnection.quoteIdentifier(name)) SET synchronous_commit = remote_write;
      ALTER DATABASE \(PGConnection.quoteIdentifier(name)) SET statement_timeout = '50ms';
      ALTER DATABASE \(PGConnection.quoteIdentifier(name)) SET idle_in_transaction_session_timeout = '100ms';
      ALTER DATABASE \(PGConnection.quoteIdentifier(name)) SET default_transaction_isolation = 'serializable';
      ALTER DATABASE \(PGConnection.quoteIdentifier(name)) SET search_path = 'nowhere';
      ALTER DATABASE \(PGConnection.quoteIdentifier(name)) SET client_encoding = 'LATIN1';
      """)
    // Found by review: decoded lossily, LATIN1 text made distinct actors look alike.
    try XPFixture.grant(db, ["alic\u{00E9}"])
    let url = db.url + "?options=-c%20work_mem%3D7777kB"
    try createSlot(db, ["SLUICE_DATABASE_URL": url])
    try XPFixture.insert(
      db,
      [
        ("o1", "u", "observe", 1, nil), ("f1", "u", "flaky", 1, nil), ("o2", "u", "observe", 1, nil),
        ("e1", "alic\u{00E8}", "award", 1, nil), ("e2", "alic\u{00E9}", "award", 2, nil),
        ("e3", "\u{1F642}", "later", 1, nil),
      ])
    let daemon = try startDaemon(db, ["SLUICE_DATABASE_URL": url, "SLUICE_MAX_ATTEMPTS": "3"])
    #expect(try eventually(30) { try XPFixture.ledgerCount(db) == 6 })
    #expect(daemon.isRunning, "\(daemon.standardError)")
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(
      try XPFixture.statuses(db) == [
        "o1": "applied", "f1": "dead", "o2": "applied", "e1": "denied", "e2": "applied", "e3": "dead",
      ])
    // synchronous_commit is the daemon's own choice in each transaction: off
    // in fast batches (acknowledged once flushed), on elsewhere; never the database's.
    #expect(
      try db.sql("SELECT DISTINCT isolation, work_mem, search_path FROM xp.seen").rows == [
        ["read committed", "7777kB", "public"]
      ])
    let commitModes = Set(try db.sql("SELECT DISTINCT sync FROM xp.seen").rows.map { $0[0] ?? "" })
    #expect(!commitModes.isEmpty && commitModes.isSubset(of: ["on", "off"]), "\(commitModes)")
  }

  static func installParted(_ db: TestDatabase) throws {
    try db.sql(
      """
      CREATE TABLE xp.parted (id text, user_id text, type text, dedupe_key text, payload jsonb NOT NULL DEFAULT '{}',
                              part int NOT NULL, PRIMARY KEY (id, part)) PARTITION BY LIST (part);
      CREATE TABLE xp.parted_1 PARTITION OF xp.parted FOR VALUES IN (1);
      CREATE TABLE xp.parted_2 PARTITION OF xp.parted FOR VALUES IN (2);
      SELECT sluice.add_source('xp.parted', actor_column => 'user_id', event_type_column => 'type');
      """)
  }

  static func insertParted(_ db: TestDatabase, _ prefix: String, parts: [Int], each: Int = 5) throws {
    for part in parts {
      try db.sql(
        """
        INSERT INTO xp.parted (id, user_id, type, payload, part)
        SELECT '\(prefix)' || \(part) || '-' || g, 'ann', 'award', '{"xp": 1}', \(part) FROM generate_series(1, \(each)) g
        """)
    }
  }

  /// 7. Every row of every partition of a partitioned source is an event of the registered table.
  @Test func partitionedSourcesLoseNothing() throws {
    let db = try TestDatabase("parted")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try Self.installParted(db)
    try Self.insertParted(db, "old", parts: [1, 2])  // before the slot: the initial backfill
    var daemon = try startDaemon(db)
    try Self.insertParted(db, "live", parts: [1, 2])
    try db.sql("CREATE TABLE xp.parted_3 PARTITION OF xp.parted FOR VALUES IN (3)")  // attached while streaming
    try Self.insertParted(db, "new", parts: [3])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 25 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    // Rows written while the table was not a source: `sluice backfill` takes them.
    try db.sql("DELETE FROM sluice.sources WHERE relation = 'xp.parted'")
    try Self.insertParted(db, "gap", parts: [1, 3])
    // The rows of the gap are the test's own (SPEC 13: rows from before a guard are trusted only when asked).
    try db.sql(
      "SELECT sluice.add_source('xp.parted', actor_column => 'user_id', event_type_column => 'type', existing => 'trust')"
    )
    let (status, output, errors) = try runCommand(db, ["backfill", "xp.parted"])
    #expect(status == 0, "\(output) \(errors)")
    #expect(try XPFixture.ledgerCount(db) == 35)
    daemon = try startDaemon(db)
    try Self.insertParted(db, "after", parts: [2])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 40 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try db.scalar("SELECT count(DISTINCT source) FROM sluice.event_log") == "1")
    #expect(try db.scalar("SELECT min(source) FROM sluice.event_log") == "xp.parted")
    #expect(try XPFixture.totals(db) == ["ann": 40])
  }

  /// 8. A dropped or invalidated slot is recreated, and the rows it missed are backfilled.
  @Test func aLostSlotIsRecreatedAndNothingIsLost() throws {
    let cluster = try PrivateCluster()
    defer { cluster.stop() }
    let admin = try PGConnection(conninfo: cluster.url)
    try admin.query("CREATE DATABASE lostslot")
    try admin.query("ALTER SYSTEM SET max_slot_wal_keep_size = '48MB'")
    try admin.query("SELECT pg_reload_conf()")
    let db = try TestDatabase(url: try TestCluster.databaseURL(cluster.url, "lostslot"))
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try createSlot(db)
    // Invalidated: WAL the slot needs is removed while the daemon is stopped.
    try XPFixture.insert(db, (0..<100).map { ("i\($0)", "ann", "award", 1, nil) })
    #expect(
      try eventually(60, "wal_status = lost") {
        try db.sql(
          """
          INSERT INTO xp.noise (note) SELECT repeat('x', 2000) FROM generate_series(1, 20000);
          SELECT pg_switch_wal(); CHECKPOINT;
          """)
        return try db.scalar("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", [db.slot]) == "lost"
      })
    var daemon = try startDaemon(db)
    #expect(try eventually(30) { try XPFixture.ledgerCount(db) == 100 })
    #expect(daemon.standardError.contains("was invalidated (wal_status lost)"))
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    // Dropped: as on a promoted standby that never had it.
    try db.sql("SELECT pg_drop_replication_slot($1)", [db.slot])
    try XPFixture.insert(db, (0..<50).map { ("d\($0)", "ann", "award", 1, nil) })
    daemon = try startDaemon(db)
    try XPFixture.insert(db, (0..<10).map { ("s\($0)", "ann", "award", 1, nil) })
    #expect(try eventually(30) { try XPFixture.ledgerCount(db) == 160 })
    #expect(daemon.standardError.contains("is missing"))
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try XPFixture.totals(db) == ["ann": 160])
    admin.close()
  }

  /// 9. A table registered while the daemon streams: its older rows are backfilled once.
  @Test func aBusyTableRegisteredWhileStreamingLosesNoRow() throws {
    let db = try TestDatabase("busy")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try db.sql(
      """
      CREATE TABLE xp.busy (id text PRIMARY KEY, user_id text, type text, payload jsonb NOT NULL DEFAULT '{}');
      INSERT INTO xp.busy SELECT 'old' || g, 'ann', 'award', '{"xp": 1}' FROM generate_series(1, 50) g;
      """)
    let daemon = try startDaemon(db)
    try db.sql(
      """
      BEGIN;
      INSERT INTO xp.busy VALUES ('x', 'ann', 'award', '{"xp": 1000}');
      SELECT sluice.add_source('xp.busy', actor_column => 'user_id', event_type_column => 'type', existing => 'trust');
      INSERT INTO xp.busy SELECT 'same' || g, 'ann', 'award', '{"xp": 1}' FROM generate_series(1, 5) g;
      COMMIT;
      INSERT INTO xp.busy SELECT 'later' || g, 'ann', 'award', '{"xp": 1}' FROM generate_series(1, 5) g;
      """)
    // The backfill's own bookkeeping (its log line, the pending row gone) follows its last ledger rows.
    #expect(
      try eventually(30) {
        try XPFixture.ledgerCount(db) == 60 && daemon.standardError.contains("backfilled a newly registered source")
      })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE event_id = 'x'") == "0")
    #expect(try XPFixture.totals(db) == ["ann": 60])
    #expect(try db.scalar("SELECT count(*) FROM sluice.pending_backfills") == "0")
  }

  /// 10. Smaller items: an ambiguous `dlq discard`, the pg_hba advice, log lines clients cannot forge.
  @Test func smallerItems() throws {
    let db = try TestDatabase("smaller")
    try XPFixture.install(db)
    try db.sql(
      """
      CREATE TABLE xp.other (id text PRIMARY KEY, user_id text, type text, payload jsonb NOT NULL DEFAULT '{}');
      SELECT sluice.add_source('xp.other', actor_column => 'user_id', event_type_column => 'type');
      """)
    try createSlot(db)
    try XPFixture.insert(db, [("same", "u", "flaky", 1, nil)])
    try db.sql("INSERT INTO xp.other VALUES ('same', 'u', 'flaky')")
    try db.sql("INSERT INTO xp.actions (id, user_id, type) VALUES ($1, 'u', 'flaky')", ["forged\ninfo all is well"])
    let daemon = try startDaemon(db, ["SLUICE_MAX_ATTEMPTS": "1"])
    #expect(try eventually { try XPFixture.ledgerCount(db) == 3 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(!daemon.standardError.split(separator: "\n").contains { $0.hasPrefix("info all is well") })
    #expect(daemon.standardError.contains("forged\\ninfo all is well"))
    let (ambiguous, _, why) = try runCommand(db, ["dlq", "discard", "same"])
    #expect(ambiguous != 0)
    #expect(why.contains("--source"))
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status = 'dead'") == "3")
    let (named, _, _) = try runCommand(db, ["dlq", "discard", "same", "--source", "xp.other"])
    #expect(named == 0)
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status = 'dead'") == "2")
  }

  /// 11. Anyone else who can write the rules can grant themselves anything: `check` fails, `run` warns.
  @Test func writableRulesAreReported() throws {
    let db = try TestDatabase("writable")
    try XPFixture.install(db)
    let (clean, before, _) = try runCommand(db, ["check"])
    #expect(clean == 0, "\(before)")
    try db.sql("GRANT INSERT ON sluice.actor_roles TO PUBLIC")
    let (status, output, _) = try runCommand(db, ["check"])
    #expect(status != 0)
    #expect(output.contains("PUBLIC can INSERT on sluice.actor_roles"), "\(output)")
    let daemon = try startDaemon(db)
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(daemon.standardError.contains("a role other than the owner can change the rules"))
    #expect(daemon.standardError.contains("table=sluice.actor_roles"))
    // Found by review: column privileges, inherited ones, and the daemon's own tables count too.
    try db.sql(
      """
      REVOKE INSERT ON sluice.actor_roles FROM PUBLIC;
      DROP ROLE IF EXISTS \(db.slot)_client; CREATE ROLE \(db.slot)_client LOGIN;
      DROP ROLE IF EXISTS \(db.slot)_writer; DROP ROLE IF EXISTS \(db.slot)_group;
      CREATE ROLE \(db.slot)_group; GRANT INSERT, UPDATE, DELETE ON sluice.sources TO \(db.slot)_group;
      CREATE ROLE \(db.slot)_writer LOGIN IN ROLE \(db.slot)_group;
      GRANT UPDATE (role) ON sluice.actor_roles TO \(db.slot)_client;
      GRANT INSERT ON sluice.policy_mirror TO \(db.slot)_client;
      """)
    let (again, report, _) = try runCommand(db, ["check"])
    #expect(again != 0)
    #expect(report.contains("\(db.slot)_client can UPDATE on sluice.actor_roles"), "\(report)")
    #expect(report.contains("\(db.slot)_client can INSERT on sluice.policy_mirror"), "\(report)")
    // Through membership: a role that writes nothing itself, but inherits the group's grant.
    #expect(report.contains("\(db.slot)_writer can DELETE, INSERT, UPDATE on sluice.sources"), "\(report)")
    #expect(!report.contains("PUBLIC can"))
    try db.sql(
      """
      DROP OWNED BY \(db.slot)_client, \(db.slot)_group; DROP ROLE \(db.slot)_client;
      DROP ROLE \(db.slot)_writer; DROP ROLE \(db.slot)_group;
      """)
    // Found by review: a source whose table left the publication would be silently not streamed.
    try db.sql("ALTER PUBLICATION sluice DROP TABLE xp.actions")
    let (_, unpublished, _) = try runCommand(db, ["check"])
    #expect(unpublished.contains("source xp.actions is not in publication sluice"), "\(unpublished)")
    let warned = try startDaemon(db)
    warned.signal(SIGTERM)
    #expect(warned.waitForExit() == 0)
    #expect(warned.standardError.contains("a source is not in the publication"))
  }

  /// Found by review: a transaction the mirror already holds, replayed after
  /// a crash lost the slot's position, must not be judged again.
  @Test func aTransactionReplayedAfterACrashIsNotJudgedAgain() throws {
    let cluster = try PrivateCluster()
    defer { cluster.stop() }
    let admin = try PGConnection(conninfo: cluster.url)
    try admin.query("CREATE DATABASE replayed")
    admin.close()
    let url = try TestCluster.databaseURL(cluster.url, "replayed")
    var db = try TestDatabase(url: url)
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try createSlot(db)
    try db.sql("DELETE FROM sluice.sources WHERE relation = 'xp.actions'")
    var daemon = try startDaemon(db)
    try db.sql("CHECKPOINT")  // the slot's position on disk: before what follows
    try db.sql(
      """
      BEGIN;
      INSERT INTO xp.actions (id, user_id, type, payload) VALUES ('x', 'ann', 'award', '{"xp": 1000}');
      SELECT sluice.add_source('xp.actions', actor_column => 'user_id', event_type_column => 'type',
                               dedupe_column => 'dedupe_key');
      INSERT INTO xp.actions (id, user_id, type, payload) VALUES ('y', 'ann', 'award', '{"xp": 1}');
      COMMIT;
      """)
    #expect(try eventually { try XPFixture.ledgerCount(db) == 1 })
    try cluster.crashAndRestart()
    _ = daemon.waitForExit(seconds: 1)
    db = try TestDatabase(url: url)
    daemon = try startDaemon(db)
    try XPFixture.insert(db, [("z", "ann", "award", 2, nil)])
    #expect(try eventually(30) { try XPFixture.ledgerCount(db) == 2 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try XPFixture.statuses(db) == ["y": "applied", "z": "applied"])
    #expect(try XPFixture.totals(db) == ["ann": 3])
  }

  /// Found by review: rows written concurrently with a source's
  /// registration, committed before it (one in a subtransaction), are not
  /// lost: the backfill waits for the stream to pass its snapshot. A
  /// 'column' source: a 'session' source's guard is a trigger, whose lock
  /// makes concurrent writers wait for the registration to commit (the
  /// insert below would then wait forever for the transaction it precedes).
  @Test func rowsCommittedDuringARegistrationAreNotLost() throws {
    let db = try TestDatabase("concurrentreg")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try db.sql(
      "CREATE TABLE xp.late (id text PRIMARY KEY, user_id text, type text, payload jsonb NOT NULL DEFAULT '{}')")
    let daemon = try startDaemon(db)
    let registering = try PGConnection(conninfo: db.url)
    defer { registering.close() }
    try registering.simpleQuery(
      """
      BEGIN;
      INSERT INTO xp.late VALUES ('own', 'ann', 'award', '{"xp": 1000}');
      SELECT sluice.add_source('xp.late', actor_column => 'user_id', event_type_column => 'type',
                               actor_from => 'column');
      """)
    try db.sql("INSERT INTO xp.late VALUES ('plain', 'ann', 'award', '{\"xp\": 1}')")
    try db.sql(
      """
      BEGIN; SAVEPOINT s; INSERT INTO xp.late VALUES ('nested', 'ann', 'award', '{"xp": 2}'); RELEASE s; COMMIT;
      """)
    try registering.simpleQuery("COMMIT")
    try db.sql("INSERT INTO xp.late VALUES ('after', 'ann', 'award', '{\"xp\": 4}')")
    #expect(try eventually(60) { try XPFixture.ledgerCount(db) == 3 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try XPFixture.statuses(db) == ["plain": "applied", "nested": "applied", "after": "applied"])
    #expect(try XPFixture.totals(db) == ["ann": 7])
  }

  /// Found by review: a `dlq discard` while `dlq retry` runs the same event's
  /// handler must not land under the handler's writes.
  @Test func discardWaitsForARetryInProgress() throws {
    let db = try TestDatabase("dlqrace")
    try XPFixture.install(db)
    try createSlot(db)
    try XPFixture.insert(db, [("r", "ann", "later", 1, nil)])  // 'later' has no handler yet: dead
    let daemon = try startDaemon(db)
    #expect(try eventually { try XPFixture.statuses(db) == ["r": "dead"] })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    try XPFixture.handler(
      db, "blocker",
      """
      BEGIN
        PERFORM pg_advisory_lock(4242);
        PERFORM pg_advisory_unlock(4242);
        INSERT INTO xp.totals VALUES (e->>'actor', 1) ON CONFLICT (user_id) DO UPDATE SET xp = xp.totals.xp + 1;
      END
      """)
    try db.sql("INSERT INTO sluice.handlers VALUES ('later', 'xp.blocker')")
    let gate = try PGConnection(conninfo: db.url)
    defer { gate.close() }
    try gate.query("SELECT pg_advisory_lock(4242)")
    func waiting(_ pattern: String) throws -> Bool {
      try db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' AND query LIKE $1",
        [pattern]) != "0"
    }
    let retry = try sluice(db, ["dlq", "retry", "r"])
    #expect(try eventually(20, "the retry's handler to wait at the gate") { try waiting("%blocker%") })
    let discard = try sluice(db, ["dlq", "discard", "r"])
    #expect(try eventually(20, "the discard to wait for the retry") { try waiting("%hashtext%") })
    try gate.query("SELECT pg_advisory_unlock(4242)")
    #expect(retry.waitForExit(seconds: 30) == 0, "\(retry.standardError)")
    // The discard waited for the retry, then found nothing dead to discard.
    #expect(discard.waitForExit(seconds: 30) == 1)
    #expect(discard.standardError.contains("no dead event with id r"))
    #expect(try XPFixture.statuses(db) == ["r": "applied"])
    #expect(try XPFixture.totals(db) == ["ann": 1])
  }
}
