import Foundation
import SluicePostgres
import Testing

/// SPEC 8: backfills keep commit order. Found on main: an award and then
/// its undo, both unprocessed when the slot was lost, were backfilled in id
/// order; the undo's id sorted first, so it was rejected ("was not
/// applied") and the award then applied, and the user kept XP they had undone.
@Suite struct CommitOrderTests {
  enum Path: String, CaseIterable { case firstRun, lostSlot, backfillCommand }
  /// The game example's handlers are Swift handlers of this binary.
  static let binary = "sluice-examples"

  /// The award and its undo, committed in that order, with the undo's id
  /// sorting before the award's (`undoFirst`) or after it.
  static func ids(undoFirst: Bool) -> (award: String, undo: String) {
    let low = "00000000-0000-4000-8000-000000000001"
    let high = "ffffffff-ffff-4fff-bfff-ffffffffffff"
    return undoFirst ? (high, low) : (low, high)
  }

  static func writeAwardThenUndo(_ db: TestDatabase, undoFirst: Bool) throws {
    let (award, undo) = ids(undoFirst: undoFirst)
    try db.sql(
      "INSERT INTO game.actions (id, user_id, type, payload) VALUES ($1, 'ann', 'award_xp', '{\"xp\": 50}')", [award])
    try db.sql(
      "INSERT INTO game.actions (id, user_id, type, payload) VALUES ($1, 'ann', 'undo', jsonb_build_object('action_id', $2::text))",
      [undo, award])
  }

  static func expectUndone(_ db: TestDatabase, undoFirst: Bool, _ path: Path) throws {
    let (award, undo) = ids(undoFirst: undoFirst)
    let statuses = try db.sql("SELECT event_id, status, coalesce(reason, '') FROM sluice.event_log ORDER BY 1").rows
    #expect(
      Set(statuses.map { [$0[0] ?? "", $0[1] ?? ""] }) == [[award, "applied"], [undo, "applied"]],
      "\(path), undo first: \(undoFirst): \(statuses)")
    #expect(
      try db.sql("SELECT xp FROM game.user_xp WHERE user_id = 'ann'").rows == [["0"]],
      "\(path), undo first: \(undoFirst): the undone award is not kept")
  }

  /// Runs the daemon until the ledger holds both events; its log says `saying`.
  static func drain(_ db: TestDatabase, saying: String) throws {
    let daemon = try startDaemon(db, binary: Self.binary)
    #expect(try eventually { try db.scalar("SELECT count(*) FROM sluice.event_log") == "2" })
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
    #expect(daemon.standardError.contains(saying), "\(daemon.standardError)")
  }

  static func run(_ db: TestDatabase, _ path: Path, undoFirst: Bool) throws {
    try ExamplesTests.load(db)
    try XPFixture.grant(db, ["ann"])
    switch path {
    case .firstRun:
      try writeAwardThenUndo(db, undoFirst: undoFirst)
      try drain(db, saying: "backfilled rows that predate the slot")
    case .lostSlot:
      try createSlot(db, binary: Self.binary)
      try writeAwardThenUndo(db, undoFirst: undoFirst)
      try db.sql("SELECT pg_drop_replication_slot($1)", [db.slot])
      try drain(db, saying: "slot is missing")
    case .backfillCommand:
      try createSlot(db, binary: Self.binary)
      try writeAwardThenUndo(db, undoFirst: undoFirst)
      let (status, output, errors) = try runCommand(db, ["backfill", "game.actions"], binary: Self.binary)
      #expect(status == 0, "\(output)\(errors)")
      // The stream then finds both in the ledger already.
      let daemon = try startDaemon(db, binary: Self.binary)
      try db.sql(
        "INSERT INTO game.actions (id, user_id, type, payload) VALUES ('11111111-1111-4111-8111-111111111111', 'ben', 'award_xp', '{\"xp\": 1}')"
      )
      #expect(try eventually { try db.scalar("SELECT count(*) FROM sluice.event_log") == "3" })
      daemon.signal(SIGTERM)
      #expect(daemon.waitForExit() == 0)
      try db.sql("DELETE FROM sluice.event_log WHERE actor = 'ben'")
    }
    try expectUndone(db, undoFirst: undoFirst, path)
  }

  @Test(arguments: Path.allCases, [true, false])
  func anUndoFollowsItsAward(path: Path, undoFirst: Bool) throws {
    let db = try TestDatabase("order_\(path.rawValue.lowercased())_\(undoFirst ? "u" : "a")")
    try Self.run(db, path, undoFirst: undoFirst)
  }

  /// With `track_commit_timestamp` on, by commit time: here a transaction
  /// that began (took its id) first but committed last goes last.
  @Test func withCommitTimestampsTheCommitDecidesNotTheStart() throws {
    let cluster = try PrivateCluster()
    defer { cluster.stop() }
    let admin = try PGConnection(conninfo: cluster.url)
    try admin.query("ALTER SYSTEM SET track_commit_timestamp = on")
    admin.close()
    try cluster.restart()
    let setup = try PGConnection(conninfo: cluster.url)
    try setup.query("CREATE DATABASE stamped")
    setup.close()
    let db = try TestDatabase(url: try TestCluster.databaseURL(cluster.url, "stamped"))
    #expect(try db.scalar("SHOW track_commit_timestamp") == "on")
    try ExamplesTests.load(db)
    try XPFixture.grant(db, ["ann"])
    // The undo's id sorts first and its transaction takes its id first; it commits after the award's.
    let (award, undo) = Self.ids(undoFirst: true)
    let early = try PGConnection(conninfo: db.url)
    defer { early.close() }
    try early.simpleQuery("BEGIN; SELECT txid_current()")
    try db.sql(
      "INSERT INTO game.actions (id, user_id, type, payload) VALUES ($1, 'ann', 'award_xp', '{\"xp\": 50}')", [award])
    try early.query(
      "INSERT INTO game.actions (id, user_id, type, payload) VALUES ($1, 'ann', 'undo', jsonb_build_object('action_id', $2::text))",
      [undo, award])
    try early.simpleQuery("COMMIT")
    #expect(
      try db.scalar(
        "SELECT (SELECT xmin::text::bigint FROM game.actions WHERE type = 'undo') < (SELECT xmin::text::bigint FROM game.actions WHERE type = 'award_xp')"
      ) == "t", "the undo's transaction id is the older one")
    try Self.drain(db, saying: "backfilled rows that predate the slot")
    try Self.expectUndone(db, undoFirst: true, .firstRun)

    let (_, output, _) = try runCommand(db, ["check"])
    #expect(!output.contains("track_commit_timestamp is off"))
  }

  @Test func checkRecommendsCommitTimestamps() throws {
    let db = try TestDatabase("order_check")
    try XPFixture.install(db)
    #expect(try db.scalar("SHOW track_commit_timestamp") == "off")
    let (_, output, _) = try runCommand(db, ["check"])
    #expect(output.contains("track_commit_timestamp is off"), "\(output)")
    #expect(output.contains("set track_commit_timestamp = on"), "\(output)")
  }
}
