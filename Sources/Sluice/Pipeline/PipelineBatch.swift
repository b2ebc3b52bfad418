import SluicePostgres

/// A batch sent in libpq pipeline mode: statements go out without waiting,
/// results are read back at sync points. Any failure aborts the fast path
/// (`FastPathAbort`), and the batch is redone carefully.
final class PipelineBatch {
  let connection: PGConnection
  /// Statements sent since the last sync, whose results are unread.
  private(set) var unread = 0
  /// Read results every so often, so neither side's socket buffer fills up.
  let syncEvery = 256

  init(connection: PGConnection) { self.connection = connection }

  func send(_ sql: String, _ parameters: [String?] = []) throws {
    try connection.send(sql, parameters)
    unread += 1
    if unread >= syncEvery { try drain() }
  }

  /// Sends a statement and waits for its result (and every one before it).
  func query(_ sql: String, _ parameters: [String?] = []) throws -> QueryResult {
    try connection.send(sql, parameters)
    unread += 1
    guard let result = try drain() else { throw FastPathAbort(reason: "no result") }
    return result
  }

  /// Syncs and reads every pending result; returns the last one. Throws
  /// `FastPathAbort` if any statement failed.
  @discardableResult
  func drain() throws -> QueryResult? {
    try connection.sendSync()
    var last: QueryResult?
    var failure: String?
    for _ in 0..<unread {
      switch try connection.nextPipelineResult() {
      case .ok(let result): last = result
      case .failed(let error): failure = failure ?? "\(error)"
      case .aborted: failure = failure ?? "aborted"
      case .sync: throw PostgresError(message: "sync before the results it follows", context: "pipeline")
      }
    }
    unread = 0
    guard case .sync = try connection.nextPipelineResult() else {
      throw PostgresError(message: "expected the end of a pipeline sync", context: "pipeline")
    }
    if let failure { throw FastPathAbort(reason: failure) }
    return last
  }

  /// After a failure: read what is still owed, ignoring errors.
  func discard() {
    guard unread > 0 else { return }
    _ = try? drain()
    unread = 0
  }
}

/// The fast path cannot finish this batch exactly: redo it the careful way.
struct FastPathAbort: Error, CustomStringConvertible {
  var reason: String
  var description: String { "fast path abandoned: \(reason)" }
}
