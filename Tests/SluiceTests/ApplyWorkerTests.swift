import Foundation
import SluiceCore
import SluicePostgres
import Testing

/// The apply path as Postgres's own apply worker runs it (issue "Apply like
/// Postgres's own apply worker"): batches commit without waiting for the WAL
/// flush and are acknowledged once it has passed them, and the next batch is
/// sent before the last one's result is read.
@Suite(.serialized) struct ApplyWorkerTests {
  /// A batch whose failure is only learnt after the next batch was sent:
  /// one handler raises, another breaks a deferred constraint at COMMIT
  /// (after which the next batch's statements run in a new transaction).
  /// Neither lets a later batch commit first: every other event commits
  /// once, in stream order.
  @Test func aBatchFoundFailedAfterTheNextWasSentIsRedoneFirst() throws {
    let db = try TestDatabase("sendahead")
    try XPFixture.install(db)
    try db.sql(
      """
      CREATE TABLE xp.parent (id text PRIMARY KEY);
      CREATE TABLE xp.child (parent text REFERENCES xp.parent DEFERRABLE INITIALLY DEFERRED);
      CREATE TABLE xp.applied (seq bigserial PRIMARY KEY, id text NOT NULL);
      """)
    try XPFixture.handler(
      db, "ordered",
      """
      BEGIN
        INSERT INTO xp.applied (id) VALUES (e->'row'->>'id');
        IF e->'row'->>'id' = 'e015' THEN RAISE EXCEPTION 'broken handler'; END IF;
        IF e->'row'->>'id' = 'e033' THEN INSERT INTO xp.child VALUES ('no such parent'); END IF;
      END
      """)
    try createSlot(db)
    // A backlog, so that batches follow each other with no pause between them.
    for tx in 0..<20 {
      try XPFixture.insert(db, (0..<10).map { (String(format: "e%03d", tx * 10 + $0), "u", "ordered", 1, nil) })
    }
    let daemon = try startDaemon(db, ["SLUICE_BATCH_SIZE": "10", "SLUICE_MAX_ATTEMPTS": "2"])
    #expect(try eventually(60) { try XPFixture.ledgerCount(db) == 200 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")
    let statuses = try XPFixture.statuses(db)
    #expect(statuses["e015"] == "dead")
    #expect(statuses["e033"] == "dead")
    let applied = (0..<200).map { String(format: "e%03d", $0) }.filter { $0 != "e015" && $0 != "e033" }
    #expect(statuses.filter { $0.value == "applied" }.count == 198)
    // Rows of rolled-back attempts are gone; what stayed committed once each, in stream order.
    #expect(try db.sql("SELECT id FROM xp.applied ORDER BY seq").rows.map { $0[0] ?? "" } == applied)
  }

  /// A Postgres crash (`pg_ctl stop -m immediate`) while the daemon applies
  /// a backlog: batches committed without waiting for the flush may be lost
  /// with it, and come again, since the slot was not acknowledged past
  /// them. Exact totals afterwards, and the stream goes on.
  @Test func aPostgresCrashUnderLoadLosesAndDoublesNothing() throws {
    let cluster = try PrivateCluster()
    defer { cluster.stop() }
    let admin = try PGConnection(conninfo: cluster.url)
    try admin.query("CREATE DATABASE crashing")
    // Asynchronous commits stay unflushed for longer: more of them for the crash to lose.
    try admin.query("ALTER SYSTEM SET wal_writer_delay = '10s'")
    try admin.query("SELECT pg_reload_conf()")
    admin.close()
    let url = try TestCluster.databaseURL(cluster.url, "crashing")
    var db = try TestDatabase(url: url)
    try XPFixture.install(db)
    let users = (0..<20).map { "p\($0)" }
    try XPFixture.grant(db, users)
    try createSlot(db)
    let seed = 20_261_125
    print("crash test seed \(seed)")
    var generator = SeededGenerator(seed: UInt64(seed))
    var expected: [String: Int] = [:]
    var rows = 0
    func insert(_ transactions: Int, prefix: String) throws {
      for tx in 0..<transactions {
        let batch = (0..<100).map { index -> (String, String, String, Int, String?) in
          let user = users[Int.random(in: 0..<users.count, using: &generator)]
          let xp = Int.random(in: 1...50, using: &generator)
          expected[user, default: 0] += xp
          return ("\(prefix)-\(tx)-\(index)", user, "award", xp, nil)
        }
        try XPFixture.insert(db, batch)
        rows += batch.count
      }
    }
    try insert(300, prefix: "before")
    var daemon = try startDaemon(db)
    #expect(try eventually(60) { try XPFixture.ledgerCount(db) >= 8_000 })
    let seenBefore = try XPFixture.ledgerCount(db)
    try cluster.crashAndRestart()
    db = try TestDatabase(url: url)
    let keptAfter = try XPFixture.ledgerCount(db)
    print("ledger rows seen before the crash: \(seenBefore), still there after it: \(keptAfter)")
    // The daemon reconnects by itself; more rows arrive after the crash.
    try insert(20, prefix: "after")
    #expect(try eventually(120) { try XPFixture.ledgerCount(db) == rows })
    #expect(daemon.isRunning, "\(daemon.standardError)")
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try XPFixture.totals(db) == expected)
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status <> 'applied'") == "0")
    // And a restart later finds nothing left to do twice.
    daemon = try startDaemon(db)
    try insert(1, prefix: "last")
    #expect(try eventually(30) { try XPFixture.ledgerCount(db) == rows })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(try XPFixture.totals(db) == expected)
  }

  /// Found by review: with synchronous standbys configured, the local WAL
  /// flush says nothing about them, so an asynchronous commit could be
  /// acknowledged before a standby that may be promoted has it. The daemon
  /// then commits synchronously: the slot does not pass an event the standby lacks.
  @Test func synchronousStandbysMakeBatchesWaitForThem() throws {
    let cluster = try PrivateCluster()
    defer { cluster.stop() }
    let admin = try PGConnection(conninfo: cluster.url)
    defer { admin.close() }
    try admin.query("CREATE DATABASE standbys")
    let db = try TestDatabase(url: try TestCluster.databaseURL(cluster.url, "standbys"))
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try createSlot(db)
    // Configured while the daemon runs (its own start writes, which would wait too).
    let daemon = try startDaemon(db)
    try admin.query("ALTER SYSTEM SET synchronous_standby_names = 'ghost'")
    try admin.query("SELECT pg_reload_conf()")
    // The writer does not wait for the (absent) standby; the daemon must.
    let writer = try PGConnection(conninfo: db.url)
    defer { writer.close() }
    try writer.simpleQuery("SET synchronous_commit = local")
    #expect(try eventually { daemon.standardError.contains("batches commit synchronously") })
    try writer.query("INSERT INTO xp.actions (id, user_id, type, payload) VALUES ('s1', 'ann', 'award', '{\"xp\": 5}')")
    let written = try writer.query("SELECT pg_current_wal_lsn()::text").scalar ?? ""
    // For 3 s the slot must stay behind the event, whose commit waits for the standby.
    let deadline = Date().addingTimeInterval(3)
    while Date() < deadline {
      let passed = try admin.query(
        "SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots WHERE database = 'standbys'", [written]
      ).scalar
      #expect(passed == "f", "acknowledged an event no synchronous standby has")
      if passed != "f" { break }
      usleep(100_000)
    }
    try admin.query("ALTER SYSTEM RESET synchronous_standby_names")
    try admin.query("SELECT pg_reload_conf()")
    #expect(
      try eventually(30) {
        try admin.query(
          "SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots WHERE database = 'standbys'", [written]
        ).scalar == "t"
      })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")
    #expect(try XPFixture.totals(db) == ["ann": 5])
  }

  /// Found by review: the apply backend is terminated while a batch sent
  /// ahead still runs (its last handler sleeps) and the next one is being
  /// sent. That batch's result was never read, so it must not be taken as
  /// applied: the next session applies it, once.
  @Test func aBatchWhoseResultWasNeverReadIsNotAcknowledged() throws {
    let db = try TestDatabase("unreadbatch")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try XPFixture.handler(
      db, "slow",
      """
      BEGIN
        IF e->'row'->>'id' = 'a9' THEN PERFORM pg_sleep(2); END IF;
        INSERT INTO xp.totals VALUES (e->>'actor', 1) ON CONFLICT (user_id) DO UPDATE SET xp = xp.totals.xp + 1;
      END
      """)
    try createSlot(db)
    try XPFixture.insert(db, (0..<10).map { ("a\($0)", "ann", "slow", 1, nil) })
    try XPFixture.insert(db, (0..<10).map { ("b\($0)", "ann", "slow", 1, nil) })
    // One source transaction per batch: begin, ten rows, commit.
    let daemon = try startDaemon(db, ["SLUICE_BATCH_SIZE": "12"])
    var terminated = false
    #expect(
      try eventually(20) {
        terminated =
          try db.scalar(
            """
            SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
            WHERE datname = current_database() AND application_name = 'sluice' AND query LIKE '%slow%'
              AND wait_event = 'PgSleep'
            """) == "1"
        return terminated
      })
    #expect(try eventually(30) { try XPFixture.ledgerCount(db) == 20 })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")
    #expect(try XPFixture.totals(db) == ["ann": 20])
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status = 'applied'") == "20")
  }
}
