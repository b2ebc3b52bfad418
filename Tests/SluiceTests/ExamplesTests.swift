import Foundation
import Sluice
import SluicePostgres
import Testing

/// The examples of SPEC section 7, run by `sluice-examples` against a real Postgres.
@Suite(.serialized) struct ExamplesTests {
  @Test func daemonRoleCannotWriteOutsideItsGrants() throws {
    let db = try TestDatabase("leastprivilege")
    try Self.load(db)
    let url = db.url.replacingOccurrences(of: "//postgres@", with: "//sluice_daemon@")
    let daemonRole = try PGConnection(conninfo: url)
    defer { daemonRole.close() }
    #expect(try daemonRole.query("SELECT current_user").scalar == "sluice_daemon")
    #expect(
      try daemonRole.query("SELECT rolreplication AND NOT rolsuper FROM pg_roles WHERE rolname = current_user").scalar
        == "t")
    let forbidden = [
      "INSERT INTO sluice.actor_roles (actor, role) VALUES ('mallory', 'staff')",
      "INSERT INTO sluice.permission_rules (event_type, role) VALUES ('*', 'anyone')",
      "UPDATE sluice.handlers SET function = 'pg_sleep'",
      "DELETE FROM sluice.sources",
      "DELETE FROM game.actions",
      "INSERT INTO shop.orders (id, customer_id, product_id, quantity) VALUES (gen_random_uuid(), 'x', 'y', 1)",
      "DELETE FROM sluice.event_log",
      "CREATE TABLE public.evil (id int)",
      "DROP TABLE game.user_xp",
      "ALTER PUBLICATION sluice ADD TABLE game.user_xp",
    ]
    for sql in forbidden {
      do {
        try daemonRole.query(sql)
        Issue.record("the daemon role could run: \(sql)")
      } catch let error as PostgresError {
        #expect(error.sqlState == .insufficientPrivilege, "\(sql) → \(error)")
      }
    }
  }

  static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

  static func load(_ db: TestDatabase) throws {
    try Migrator.migrate(db.connection, publication: "sluice")
    for name in ["examples/game", "examples/shop", "roles"] {
      let sql = try String(contentsOf: repository.appendingPathComponent("sql/\(name).sql"), encoding: .utf8)
      try db.sql(sql)
    }
  }

  /// The examples' daemon runs as the least-privileged role of sql/roles.sql, with outcomes on.
  func startExamplesDaemon(_ db: TestDatabase) throws -> ChildProcess {
    let daemon = try startDaemon(
      db,
      [
        "SLUICE_DATABASE_URL": db.url.replacingOccurrences(of: "//postgres@", with: "//sluice_daemon@"),
        "SLUICE_OUTCOMES": "on",
      ],
      binary: "sluice-examples")
    #expect(daemon.standardError.contains("database=postgresql://sluice_daemon@"))
    return daemon
  }

  func uuid(_ n: Int) -> String { String(format: "00000000-0000-4000-8000-%012d", n) }

  func action(_ db: TestDatabase, _ n: Int, _ user: String, _ type: String, _ payload: String, dedupe: String? = nil)
    throws
  {
    try db.sql(
      "INSERT INTO game.actions (id, user_id, type, payload, dedupe_key) VALUES ($1, $2, $3, $4::jsonb, $5)",
      [uuid(n), user, type, payload, dedupe])
  }

  func outcome(_ db: TestDatabase, _ n: Int) throws -> String {
    let row = try db.sql("SELECT status, reason FROM sluice.event_log WHERE event_id = $1", [uuid(n)]).rows.first
    return [row?[0], row?[1]].compactMap { $0 ?? nil }.joined(separator: ": ")
  }

  /// What `actor`'s app reads, by event id: their outcomes, through
  /// row-level security as a client role (as scripts/demo shows them), an
  /// order as its shop status.
  func seen(_ db: TestDatabase, _ actor: String) throws -> [String: String] {
    let role = OutcomeTests.role(db, "client")
    if try db.scalar("SELECT count(*) FROM pg_roles WHERE rolname = $1", [role]) == "0" {
      try db.sql(
        """
        CREATE ROLE \(role);
        GRANT USAGE ON SCHEMA sluice, shop TO \(role);
        GRANT SELECT ON sluice.outcomes, shop.order_status TO \(role);
        """)
    }
    try db.sql("SET ROLE \(role)")
    defer { _ = try? db.sql("RESET ROLE; RESET sluice.actor") }
    try db.sql("SELECT set_config('sluice.actor', $1, false)", [actor])
    var seen: [String: String] = [:]
    for row in try db.sql(
      """
      SELECT o.event_id,
             CASE WHEN s.status IS NOT NULL THEN s.status || coalesce(': ' || replace(s.reason, '_', ' '), '')
                  ELSE o.status || coalesce(': ' || o.reason, '') END
      FROM sluice.outcomes o LEFT JOIN shop.order_status s ON o.source = 'shop.orders' AND s.order_id::text = o.event_id
      """
    ).rows {
      seen[row[0] ?? ""] = row[1] ?? ""
    }
    return seen
  }

  /// Every event with an actor has its outcome, with the ledger's status.
  func outcomesMatchTheLedger(_ db: TestDatabase) throws {
    #expect(
      try db.scalar(
        """
        SELECT count(*) FROM sluice.event_log l FULL JOIN sluice.outcomes o USING (source, event_id)
        WHERE (l.actor <> '' OR o.event_id IS NOT NULL) AND o.status IS DISTINCT FROM l.status
        """) == "0")
  }

  func waitForLedger(_ db: TestDatabase, _ count: Int) throws {
    #expect(try eventually(30, "\(count) ledger rows") { try XPFixture.ledgerCount(db) >= count })
  }

  @Test func gameXPUndoAndHostilePayloads() throws {
    let db = try TestDatabase("game")
    try Self.load(db)
    try db.sql(
      "INSERT INTO sluice.actor_roles (actor, role) VALUES ('ann', 'player'), ('ben', 'player'), ('cat', 'player')")
    let daemon = try startExamplesDaemon(db)

    // Three offline clients of three users sync concurrently: 3 × 40 awards of 1…40 XP.
    let urls = Array(repeating: db.url, count: 3)
    DispatchQueue.concurrentPerform(iterations: 3) { client in
      guard let connection = try? PGConnection(conninfo: urls[client]) else { return }
      defer { connection.close() }
      let user = ["ann", "ben", "cat"][client]
      for i in 1...40 {
        _ = try? connection.query(
          "INSERT INTO game.actions (id, user_id, type, payload) VALUES ($1, $2, 'award_xp', $3::jsonb)",
          [String(format: "00000000-0000-4000-8000-%012d", 1000 * (client + 1) + i), user, "{\"xp\": \(i)}"])
      }
    }
    try waitForLedger(db, 120)
    // Sum of 1…40 = 820 each.
    #expect(
      try db.sql("SELECT user_id, xp, level FROM game.user_xp ORDER BY user_id").rows == [
        ["ann", "820", "1"], ["ben", "820", "1"], ["cat", "820", "1"],
      ])

    // The same action synced from two devices counts once; level follows xp.
    try action(db, 1, "ann", "award_xp", #"{"xp": 10000}"#, dedupe: "daily-bonus")
    try action(db, 2, "ann", "award_xp", #"{"xp": 10000}"#, dedupe: "daily-bonus")
    // Undo exactly once; a second undo is rejected; ben cannot undo ann's action.
    try action(db, 3, "ben", "undo", "{\"action_id\": \"\(uuid(1))\"}")
    try action(db, 4, "ann", "undo", "{\"action_id\": \"\(uuid(1))\"}")
    try action(db, 5, "ann", "undo", "{\"action_id\": \"\(uuid(1))\"}")
    // Undo of nothing, of itself, of an undo, of a rejected award.
    try action(db, 6, "ann", "undo", "{\"action_id\": \"\(uuid(999))\"}")
    try action(db, 7, "ann", "undo", "{\"action_id\": \"\(uuid(7))\"}")
    try action(db, 8, "ann", "undo", "{\"action_id\": \"\(uuid(4))\"}")
    // Hostile and malformed payloads: each rejected with a reason, no effect. (jsonb stores 1e3 as
    // 1000, an integer by the time a handler sees it; 1.0 keeps its decimal point.)
    let hostile = [
      #"{"xp": "10"}"#, #"{"xp": 10.5}"#, #"{"xp": -5}"#, #"{"xp": 0}"#, #"{"xp": 10001}"#,
      #"{"xp": 9223372036854775808}"#, #"{"xp": 1.0}"#, "{}", "[1, 2]", #""xp""#,
      String(repeating: "[", count: 100) + String(repeating: "]", count: 100),
    ]
    for (index, payload) in hostile.enumerated() { try action(db, 100 + index, "ann", "award_xp", payload) }
    try action(db, 9, "ann", "undo", "{\"action_id\": \"\(uuid(100))\"}")
    try action(db, 10, "ann", "undo", #"{"action_id": "'; DROP TABLE game.user_xp; --"}"#)
    // A user without the player role, an unknown type, an empty actor, SQL in the type.
    try action(db, 11, "dan", "award_xp", #"{"xp": 50}"#)
    try action(db, 12, "ann", "teleport", "{}")
    try action(db, 13, "", "award_xp", #"{"xp": 50}"#)
    try action(db, 14, "ann", "'; DROP TABLE sluice.event_log; --", "{}")
    try action(db, 15, "x'); DELETE FROM sluice.actor_roles; --", "award_xp", #"{"xp": 50}"#)
    try waitForLedger(db, 120 + 15 + hostile.count)
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")

    #expect(try outcome(db, 1) == "applied")
    #expect(try outcome(db, 2).hasPrefix("duplicate"))
    #expect(try outcome(db, 3) == "rejected: no applied award of yours to undo")
    #expect(try outcome(db, 4) == "applied")
    #expect(try outcome(db, 5) == "rejected: no applied award of yours to undo")
    #expect(try outcome(db, 6) == "rejected: no applied award of yours to undo")
    #expect(try outcome(db, 7) == "rejected: no applied award of yours to undo")
    #expect(try outcome(db, 8) == "rejected: no applied award of yours to undo")
    #expect(try outcome(db, 9) == "rejected: no applied award of yours to undo")
    #expect(try outcome(db, 10) == "rejected: payload.action_id must be a uuid")
    for index in 0..<hostile.count {
      let result = try outcome(db, 100 + index)
      #expect(result.hasPrefix("rejected: payload"), "payload \(hostile[index]) → \(result)")
    }
    #expect(try outcome(db, 11) == "denied: event type 'award_xp' denied for actor 'dan': needs role player")
    #expect(try outcome(db, 12).hasPrefix("denied: event type 'teleport' denied for actor 'ann'"))
    #expect(try outcome(db, 13).hasPrefix("denied"))
    #expect(try outcome(db, 14).hasPrefix("denied"))
    #expect(try outcome(db, 15).hasPrefix("denied: event type 'award_xp' denied for actor 'x'); DELETE"))
    #expect(try db.scalar("SELECT count(*) FROM sluice.actor_roles") == "3", "the roles are intact")
    // ann: 820 + 10000 − 10000 (undone); dan got nothing; the tables are intact.
    #expect(
      try db.sql("SELECT user_id, xp, level FROM game.user_xp ORDER BY user_id").rows == [
        ["ann", "820", "1"], ["ben", "820", "1"], ["cat", "820", "1"],
      ])
    #expect(try db.scalar("SELECT count(*) FROM sluice.event_log WHERE status = 'dead'") == "0")

    // Each player's app shows them their own outcomes, with the reasons.
    try outcomesMatchTheLedger(db)
    let ben = try seen(db, "ben")
    #expect(ben[uuid(3)] == "rejected: no applied award of yours to undo")
    #expect(ben.count == 41, "ben's 40 awards and his undo: \(ben.count)")
    let ann = try seen(db, "ann")
    #expect(ann[uuid(3)] == nil)
    #expect(ann[uuid(5)] == "rejected: no applied award of yours to undo")
    #expect(ann[uuid(2)]?.hasPrefix("duplicate: dedupe key 'daily-bonus'") == true)
    #expect(
      try seen(db, "dan") == [uuid(11): "denied: event type 'award_xp' denied for actor 'dan': needs role player"])
    #expect(try seen(db, "") == [:], "an empty actor has no outcomes")
  }

  @Test func levelFollowsXP() throws {
    let db = try TestDatabase("level")
    try Self.load(db)
    try db.sql("INSERT INTO sluice.actor_roles (actor, role) VALUES ('eve', 'player')")
    let daemon = try startExamplesDaemon(db)
    try action(db, 1, "eve", "award_xp", #"{"xp": 999}"#)
    try waitForLedger(db, 1)
    #expect(try db.sql("SELECT xp, level FROM game.user_xp").rows == [["999", "1"]])
    try action(db, 2, "eve", "award_xp", #"{"xp": 1}"#)
    try waitForLedger(db, 2)
    #expect(try db.sql("SELECT xp, level FROM game.user_xp").rows == [["1000", "2"]])
    try action(db, 3, "eve", "award_xp", #"{"xp": 2500}"#)
    try action(db, 4, "eve", "undo", "{\"action_id\": \"\(uuid(2))\"}")
    try waitForLedger(db, 4)
    #expect(try db.sql("SELECT xp, level FROM game.user_xp").rows == [["3499", "4"]])
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0)
  }

  @Test func shopOrdersRestocksAndStock() throws {
    let db = try TestDatabase("shop")
    try Self.load(db)
    try db.sql(
      """
      INSERT INTO shop.products VALUES ('lamp', 'Desk lamp', 5, 2500), ('mug', 'Mug', 0, 900);
      INSERT INTO sluice.actor_roles (actor, role) VALUES ('cus1', 'customer'), ('cus2', 'customer'), ('sam', 'staff');
      """)
    let daemon = try startExamplesDaemon(db)
    func order(_ n: Int, _ customer: String, _ product: String, _ quantity: Int) throws {
      try db.sql(
        "INSERT INTO shop.orders (id, customer_id, product_id, quantity) VALUES ($1, $2, $3, $4)",
        [uuid(n), customer, product, String(quantity)])
    }
    func restock(_ n: Int, _ staff: String, _ product: String, _ quantity: Int) throws {
      try db.sql(
        "INSERT INTO shop.restocks (id, staff_id, product_id, quantity) VALUES ($1, $2, $3, $4)",
        [uuid(n), staff, product, String(quantity)])
    }
    // Two customers oversell: 5 lamps in stock, 2 + 2 + 2 ordered.
    try order(1, "cus1", "lamp", 2)
    try order(2, "cus2", "lamp", 2)
    try order(3, "cus1", "lamp", 2)
    try order(4, "cus2", "mug", 1)
    try order(5, "cus1", "ghost", 1)
    try order(6, "cus1", "lamp", 0)
    try order(7, "cus1", "lamp", 1001)
    try order(8, "sam", "lamp", 1)  // staff is not a customer
    try restock(20, "sam", "mug", 10)
    try restock(21, "cus1", "mug", 10)  // a customer may not restock
    try restock(22, "sam", "ghost", 10)
    try restock(23, "sam", "mug", 0)
    try restock(24, "sam", "mug", 1_000_001)
    try order(9, "cus2", "mug", 3)
    try waitForLedger(db, 14)
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit() == 0, "\(daemon.standardError)")

    func status(_ n: Int) throws -> [String?] {
      try db.sql("SELECT status, reason FROM shop.order_status WHERE order_id = $1", [uuid(n)]).rows.first ?? []
    }
    #expect(try status(1) == ["placed", nil])
    #expect(try status(2) == ["placed", nil])
    #expect(try status(3) == ["declined", "out_of_stock"])
    #expect(try status(4) == ["declined", "out_of_stock"])
    #expect(try status(5) == ["declined", "unknown_product"])
    #expect(try status(9) == ["placed", nil])
    for n in [1, 2, 3, 4, 5, 9, 20] { #expect(try outcome(db, n) == "applied", "event \(n)") }
    #expect(try outcome(db, 6) == "rejected: bad_quantity")
    #expect(try outcome(db, 7) == "rejected: bad_quantity")
    #expect(try status(6).isEmpty && status(7).isEmpty, "a rejected order writes nothing")
    #expect(try outcome(db, 8).hasPrefix("denied"))
    #expect(try outcome(db, 21).hasPrefix("denied: event type 'restock' denied for actor 'cus1'"))
    #expect(try outcome(db, 22) == "rejected: unknown_product")
    #expect(try outcome(db, 23) == "rejected: bad_quantity")
    #expect(try outcome(db, 24) == "rejected: bad_quantity")
    #expect(try db.sql("SELECT id, stock FROM shop.products ORDER BY id").rows == [["lamp", "1"], ["mug", "7"]])

    // Each customer's app shows their orders' fate.
    try outcomesMatchTheLedger(db)
    let cus1 = try seen(db, "cus1")
    #expect(cus1[uuid(1)] == "placed")
    #expect(cus1[uuid(3)] == "declined: out of stock")
    #expect(cus1[uuid(5)] == "declined: unknown product")
    #expect(cus1[uuid(6)] == "rejected: bad_quantity")
    #expect(cus1[uuid(21)]?.hasPrefix("denied: event type 'restock'") == true)
    #expect(cus1[uuid(2)] == nil, "another customer's order")
    #expect(try seen(db, "cus2")[uuid(4)] == "declined: out of stock")
  }
}
