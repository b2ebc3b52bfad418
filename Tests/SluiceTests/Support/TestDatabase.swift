import Foundation
import SluicePostgres
import Synchronization
import Testing

/// The cluster `scripts/test` started, and a fresh database per test in it.
enum TestCluster {
  static var adminURL: String {
    get throws {
      guard let url = ProcessInfo.processInfo.environment["SLUICE_TEST_DATABASE_URL"] else {
        throw SetupError("SLUICE_TEST_DATABASE_URL is not set: run the integration tests with scripts/test")
      }
      return url
    }
  }

  /// Folder of the built `sluice` binaries.
  static var binDirectory: URL {
    if let dir = ProcessInfo.processInfo.environment["SLUICE_BIN_DIR"] { return URL(fileURLWithPath: dir) }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent().deletingLastPathComponent()
    return root.appendingPathComponent(".build/debug")
  }

  private static let counter = Atomic<Int>(0)

  /// Creates an empty database and returns its URL.
  static func createDatabase(_ label: String) throws -> String {
    let admin = try PGConnection(conninfo: try adminURL)
    defer { admin.close() }
    let number = counter.add(1, ordering: .relaxed).newValue
    let name = "t_\(label.lowercased().filter { $0.isLetter || $0.isNumber })_\(getpid())_\(number)"
    try admin.query("CREATE DATABASE \(PGConnection.quoteIdentifier(name))")
    return try databaseURL(try adminURL, name)
  }

  static func databaseURL(_ url: String, _ database: String) throws -> String {
    guard var components = URLComponents(string: url) else { throw SetupError("bad URL \(url)") }
    components.path = "/" + database
    return components.string!
  }
}

struct SetupError: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

/// A database for one test, with a connection to it.
final class TestDatabase: @unchecked Sendable {
  let url: String
  let connection: PGConnection
  /// A replication slot name of this database's own (slot names are cluster-wide).
  let slot: String

  convenience init(_ label: String) throws {
    try self.init(url: try TestCluster.createDatabase(label))
  }

  /// A database that already exists (e.g. in a private cluster).
  init(url: String) throws {
    self.url = url
    slot = String(url.split(separator: "/").last ?? "sluice")
    connection = try PGConnection(conninfo: url)
    // A test that waits on a lock only it could release (its own open
    // transaction elsewhere) fails in two minutes instead of hanging the
    // suite, and with it every slot creation in the cluster.
    try connection.simpleQuery("SET lock_timeout = '120s'")
  }

  @discardableResult
  func sql(_ text: String, _ parameters: [String?] = []) throws -> QueryResult {
    parameters.isEmpty ? try connection.simpleQuery(text) : try connection.query(text, parameters)
  }

  func scalar(_ text: String, _ parameters: [String?] = []) throws -> String? {
    try connection.query(text, parameters).scalar
  }

  /// Slots are cluster-wide and limited: a test's slots go with its database.
  deinit {
    _ = try? connection.query(
      "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = current_database() AND NOT active"
    )
    connection.close()
  }
}

/// Polls `condition` until it holds or `seconds` pass.
func eventually(
  _ seconds: Double = 20, _ what: @autoclosure () -> String = "condition",
  sourceLocation: SourceLocation = #_sourceLocation,
  _ condition: () throws -> Bool
) rethrows -> Bool {
  let deadline = Date().addingTimeInterval(seconds)
  while Date() < deadline {
    if try condition() { return true }
    usleep(20_000)
  }
  if try condition() { return true }
  Issue.record("timed out after \(seconds)s waiting for \(what())", sourceLocation: sourceLocation)
  return false
}
