import Foundation
import Sluice
import SluicePostgres
import Testing

/// SPEC section 6 and 8: a daemon cut off from Postgres by a silent network
/// partition (packets vanish, nobody gets an error) must not keep the slot:
/// a standby streams within 10 s, and once the link heals nothing is lost
/// or doubled. The streaming daemon runs in a network namespace of the
/// test's own, reaching Postgres over a veth pair whose host side the test
/// takes down. The server keeps its defaults (no keepalives, a 60 s
/// wal_sender_timeout): the daemon's own session settings must do. Needs
/// root and iproute2 (CI has both).
@Suite(.serialized) struct PartitionTests {
  static let ip = "/usr/sbin/ip"

  @Test func aStandbyTakesOverFromAPartitionedDaemon() throws {
    guard getuid() == 0, FileManager.default.isExecutableFile(atPath: Self.ip) else {
      Issue.record("needs root and iproute2 (scripts/install-deps installs it)")
      return
    }
    let tag = String(getpid() % 10_000)
    let namespace = "sluice-part-\(tag)"
    let hostSide = "slh\(tag)"
    let daemonSide = "sln\(tag)"
    // Link-local addresses on a link of the test's own: nothing else can be reached this way.
    let serverAddress = "169.254.77.1"
    let daemonAddress = "169.254.77.2"
    func ip(_ arguments: String...) throws { _ = try PrivateCluster.run([Self.ip] + arguments) }
    _ = try? PrivateCluster.run([Self.ip, "netns", "delete", namespace])
    _ = try? PrivateCluster.run([Self.ip, "link", "delete", hostSide])
    try ip("netns", "add", namespace)
    defer { _ = try? PrivateCluster.run([Self.ip, "netns", "delete", namespace]) }
    try ip("link", "add", hostSide, "type", "veth", "peer", "name", daemonSide)
    defer { _ = try? PrivateCluster.run([Self.ip, "link", "delete", hostSide]) }
    try ip("link", "set", daemonSide, "netns", namespace)
    try ip("addr", "add", "\(serverAddress)/24", "dev", hostSide)
    try ip("link", "set", hostSide, "up")
    try ip("netns", "exec", namespace, Self.ip, "addr", "add", "\(daemonAddress)/24", "dev", daemonSide)
    try ip("netns", "exec", namespace, Self.ip, "link", "set", daemonSide, "up")
    try ip("netns", "exec", namespace, Self.ip, "link", "set", "lo", "up")

    let cluster = try PrivateCluster()
    defer { cluster.stop() }
    let hba = cluster.directory + "/data/pg_hba.conf"
    let rules = try String(contentsOfFile: hba, encoding: .utf8) + "\nhost all all 169.254.77.0/24 trust\n"
    try rules.write(toFile: hba, atomically: true, encoding: .utf8)
    let admin = try PGConnection(conninfo: cluster.url)
    try admin.query("ALTER SYSTEM SET listen_addresses = '127.0.0.1, \(serverAddress)'")
    try admin.query("CREATE DATABASE partition")
    admin.close()
    try cluster.restart()
    let url = try TestCluster.databaseURL(cluster.url, "partition")
    let db = try TestDatabase(url: url)
    try XPFixture.install(db)
    try XPFixture.grant(db, ["ann"])
    let port = URLComponents(string: url)?.port ?? 0
    let partitionedURL = "postgresql://postgres@\(serverAddress):\(port)/partition"

    let active = try ChildProcess(
      Self.ip,
      ["netns", "exec", namespace, TestCluster.binDirectory.appendingPathComponent("sluice").path, "run"],
      environment: [
        "SLUICE_DATABASE_URL": partitionedURL, "SLUICE_SLOT": db.slot, "SLUICE_METRICS_ADDR": "off",
      ])
    #expect(try eventually(30, "the namespaced daemon to stream") { active.standardError.contains("info streaming") })
    let standby = try sluice(db, ["run"])
    #expect(try eventually(10, "the standby to wait") { standby.standardError.contains("standing by") })
    try XPFixture.insert(db, (0..<100).map { ("before\($0)", "ann", "award", 1, nil) })
    #expect(try eventually(20) { try XPFixture.ledgerCount(db) == 100 })

    // The partition: the host side goes down; packets vanish both ways.
    try ip("link", "set", hostSide, "down")
    let cut = Date()
    for round in 0..<3 {
      try XPFixture.insert(db, (0..<100).map { ("during\(round)-\($0)", "ann", "award", 1, nil) })
    }
    #expect(
      try eventually(75, "the standby to stream") { standby.standardError.contains("info streaming") })
    let takeover = Date().timeIntervalSince(cut)
    print("standby streaming \(String(format: "%.1f", takeover)) s after the partition")
    #expect(takeover < 10)
    #expect(try eventually(30) { try XPFixture.ledgerCount(db) == 400 })

    // The link heals: the cut-off daemon finds the slot taken and waits.
    try ip("link", "set", hostSide, "up")
    try XPFixture.insert(db, (0..<100).map { ("after\($0)", "ann", "award", 1, nil) })
    #expect(try eventually(60) { try XPFixture.ledgerCount(db) == 500 })
    #expect(
      try eventually(90, "the healed daemon to stand by") {
        active.standardError.components(separatedBy: "standing by").count > 1 || !active.isRunning
      })
    standby.signal(SIGTERM)
    #expect(standby.waitForExit(seconds: 30) == 0)
    active.signal(SIGTERM)
    _ = active.waitForExit(seconds: 30)
    #expect(try XPFixture.totals(db) == ["ann": 500])
    #expect(try db.scalar("SELECT count(DISTINCT event_id) FROM sluice.event_log WHERE status = 'applied'") == "500")
  }
}
