import Foundation

/// A cluster of a test's own, from scripts/pg-start, for tests that restart
/// Postgres: the shared cluster must not go down under other tests.
final class PrivateCluster: @unchecked Sendable {
  let directory: String
  let url: String
  let binDirectory: String

  init() throws {
    let output = try Self.script("pg-start", [])
    var values: [String: String] = [:]
    for line in output.split(separator: "\n") {
      let parts = line.split(separator: "=", maxSplits: 1)
      if parts.count == 2 { values[String(parts[0])] = String(parts[1]) }
    }
    guard let directory = values["PGDIR"], let url = values["DATABASE_URL"], let bin = values["PGBIN"] else {
      throw SetupError("pg-start printed no PGDIR: \(output)")
    }
    self.directory = directory
    self.url = url
    self.binDirectory = bin
  }

  /// `pg_ctl restart -m fast`: every connection is cut, the server comes back.
  func restart() throws { _ = try Self.script("pg-restart", [directory]) }

  func stop() { _ = try? Self.script("pg-stop", [directory]) }

  /// `pg_ctl restart -m immediate`: a crash. Whatever was not flushed, and
  /// slot positions not saved by a checkpoint, are gone.
  func crashAndRestart() throws { _ = try Self.script("pg-restart", [directory, "immediate"]) }

  static func script(_ name: String, _ arguments: [String]) throws -> String {
    try run([ExamplesTests.repository.appendingPathComponent("scripts/\(name)").path] + arguments)
  }

  /// Output goes through a file, not a pipe: the postmaster that pg_ctl
  /// forks would inherit a pipe's write end and it would never reach EOF.
  @discardableResult
  static func run(_ command: [String]) throws -> String {
    let path = NSTemporaryDirectory() + "sluice-cluster-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).out"
    FileManager.default.createFile(atPath: path, contents: nil)
    defer { try? FileManager.default.removeItem(atPath: path) }
    let output = open(path, O_WRONLY | O_CLOEXEC)
    guard output >= 0 else { throw SetupError("could not open \(path)") }
    defer { close(output) }
    let status = try Spawned(command, output: output).waitForExit()
    guard status == 0 else { throw SetupError("\(command.joined(separator: " ")) failed") }
    return try String(contentsOfFile: path, encoding: .utf8)
  }
}
