import Foundation
import SluicePostgres
import Testing

/// Creating a logical slot waits for every transaction that held an id when
/// it began, in the whole cluster. Found when one test's forgotten open
/// transaction stalled every other daemon of a full run: the daemon names
/// what it waits for, and a stop cancels the wait. A private cluster: the
/// open transaction would stall the shared one's slot creations too.
@Suite struct SlotCreationTests {
  @Test func aSlotCreationBehindAnOpenTransactionNamesItAndStopsOnSIGTERM() throws {
    let cluster = try PrivateCluster()
    defer { cluster.stop() }
    let admin = try PGConnection(conninfo: cluster.url)
    try admin.query("CREATE DATABASE blocked")
    admin.close()
    let db = try TestDatabase(url: try TestCluster.databaseURL(cluster.url, "blocked"))
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    let holder = try PGConnection(conninfo: db.url, applicationName: "forgotten-session")
    defer { holder.close() }
    try holder.simpleQuery("BEGIN; SELECT txid_current()")  // an id, held
    let pid = try holder.query("SELECT pg_backend_pid()").scalar ?? "?"

    let daemon = try sluice(db, ["run"])
    #expect(
      try eventually(30, "the daemon to name the open transaction: \(daemon.standardError)") {
        daemon.standardError.contains("creating the slot waits for transactions")
          && daemon.standardError.contains("pid \(pid) (application forgotten-session, idle in transaction")
      })
    #expect(!daemon.standardError.contains("info streaming"))
    let asked = ContinuousClock.now
    daemon.signal(SIGTERM)
    #expect(daemon.waitForExit(seconds: 10) == 0, "\(daemon.standardError)")
    #expect(asked.duration(to: .now) < .seconds(10))

    // Once the transaction ends, the slot is made and nothing was lost.
    try XPFixture.insert(db, [("a", "ann", "award", 5, nil)])
    try holder.simpleQuery("COMMIT")
    let next = try startDaemon(db)
    #expect(try eventually { try XPFixture.statuses(db) == ["a": "applied"] })
    next.signal(SIGTERM)
    #expect(next.waitForExit() == 0)
    #expect(try XPFixture.totals(db) == ["ann": 5])
  }
}
