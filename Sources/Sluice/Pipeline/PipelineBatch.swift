import SluicePostgres

/// A batch sent in libpq pipeline mode: statements go out without waiting,
/// results are read back at sync points. Any failure aborts the fast path
/// (`FastPathAbort`), and the batch is redone carefully.
final class PipelineBatch {
  let connection: PGConnection
  /// Results owed since the last sync: the SQL of each statement (a PREPARE owes one too).
  private var owed: [String] = []
  var unread: Int { owed.count }
  /// Read results every so often, so neither side's socket buffer fills up.
  let syncEvery = 256

  init(connection: PGConnection) { self.connection = connection }

  func send(_ sql: String, _ parameters: [String?] = []) throws {
    if try connection.send(sql, parameters) { owed.append(sql) }
    owed.append(sql)
    if owed.count >= syncEvery { try drain() }
  }

  /// Sends a statement and waits for its result (and every one before it).
  func query(_ sql: String, _ parameters: [String?] = []) throws -> QueryResult {
    if try connection.send(sql, parameters) { owed.append(sql) }
    owed.append(sql)
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
    let statements = owed
    owed.removeAll(keepingCapacity: true)
    for sql in statements {
      switch try connection.nextPipelineResult() {
      case .ok(let result): last = result
      case .failed(let error):
        failure = failure ?? "\(error)"
        connection.forgetPrepared(sql)
      case .aborted:
        failure = failure ?? "aborted"
        // A PREPARE skipped by the abort never happened.
        connection.forgetPrepared(sql)
      case .sync: throw PostgresError(message: "sync before the results it follows", context: "pipeline")
      }
    }
    guard case .sync = try connection.nextPipelineResult() else {
      throw PostgresError(message: "expected the end of a pipeline sync", context: "pipeline")
    }
    if let failure { throw FastPathAbort(reason: failure) }
    return last
  }

  /// After a failure: read what is still owed, ignoring errors.
  func discard() {
    guard !owed.isEmpty else { return }
    _ = try? drain()
    owed.removeAll()
  }
}

/// The fast path cannot finish this batch exactly: redo it the careful way.
struct FastPathAbort: Error, CustomStringConvertible {
  var reason: String
  var description: String { "fast path abandoned: \(reason)" }
}
