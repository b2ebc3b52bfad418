import Foundation
import SluicePostgres
import Testing

/// SPEC 8: a backfill says how far it is while it runs: every 5 s in the
/// log and in `status` (and systemd's STATUS=, through the same report).
/// Found on main: a first run over millions of rows said nothing until it
/// ended ("backfilled rows that predate the slot rows=N").
@Suite struct BackfillProgressIntegrationTests {
  @Test func aLongBackfillReportsItsProgressInTheLogAndInStatus() throws {
    let db = try TestDatabase("backfillprogress")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try XPFixture.handler(db, "slow", "BEGIN PERFORM pg_sleep(0.002); END")
    try db.sql(
      """
      INSERT INTO xp.actions (id, user_id, type, payload)
      SELECT 'b' || lpad(n::text, 5, '0'), 'ann', 'slow', '{}' FROM generate_series(1, 4000) n
      """)
    let path = NSTemporaryDirectory() + "sluice-backfill-\(getpid()).sock"
    let socket = try DatagramSocket(path: path)
    defer { socket.close() }
    let daemon = try sluice(db, ["run"], ["SLUICE_BATCH_SIZE": "50", "NOTIFY_SOCKET": path])
    var seen = ""
    var messages: [String] = []
    #expect(
      try eventually(60, "status to show the backfill: \(seen)") {
        messages += socket.receiveAll()
        seen = try runCommand(db, ["status"]).1
        return seen.contains("backfill   xp.actions: ") && seen.contains(" of 4000 rows")
      })
    #expect(
      try eventually(30, "systemd's STATUS= to show it: \(messages)") {
        messages += socket.receiveAll()
        return messages.contains { $0.contains("STATUS=backfilling xp.actions: ") && $0.contains(" of 4000 rows") }
      })
    #expect(try eventually(120, "the backfill to end") { daemon.standardError.contains("info streaming") })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    let log = daemon.standardError
    #expect(log.contains("backfill progress eta_s="), "\(log)")
    #expect(log.contains("of=4000"), "\(log)")
    #expect(log.contains("rows=4000"), "the end is reported: \(log)")
    #expect(try XPFixture.ledgerCount(db) == 4000)
    #expect(!(try runCommand(db, ["status"]).1.contains("backfill   ")), "a finished backfill is not shown")
    let (_, json, _) = try runCommand(db, ["status", "--json"])
    #expect(json.contains(#""backfills":[]"#), "\(json)")
  }

  /// `sluice backfill` on a terminal draws a bar (here under `script`, which gives it a pty).
  @Test func sluiceBackfillOnATerminalDrawsABar() throws {
    let script = ["/usr/bin/script", "/bin/script"].first { FileManager.default.isExecutableFile(atPath: $0) }
    guard let script else {
      Issue.record("util-linux's script is missing: it gives the command a terminal")
      return
    }
    let db = try TestDatabase("backfillbar")
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    try createSlot(db)
    try db.sql(
      """
      INSERT INTO xp.actions (id, user_id, type, payload)
      SELECT 'b' || n, 'ann', 'award', '{"xp": 1}' FROM generate_series(1, 3000) n
      """)
    let binary = TestCluster.binDirectory.appendingPathComponent("sluice").path
    let command = "\(binary) backfill xp.actions"
    let process = try ChildProcess(
      script, ["-qec", command, "/dev/null"],
      environment: ["SLUICE_DATABASE_URL": db.url, "SLUICE_SLOT": db.slot, "SLUICE_METRICS_ADDR": "off"])
    #expect(process.waitForExit(seconds: 60) == 0, "\(process.standardOutput)\(process.standardError)")
    let output = process.standardOutput + process.standardError
    #expect(output.contains("] 100.0% 3000/3000"), "\(output)")
    #expect(output.contains("\r["), "redrawn in place: \(output)")
    #expect(output.contains("processed 3000 rows of xp.actions"), "\(output)")
    #expect(!output.contains("backfill progress eta_s"), "the bar, not log lines: \(output)")
  }
}
