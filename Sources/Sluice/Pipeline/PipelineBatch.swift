import SluicePostgres

/// A batch sent in libpq pipeline mode: statements go out without waiting,
/// results are read back at sync points. Any failure aborts the fast path
/// (`FastPathAbort`), and the batch is redone carefully.
final class PipelineBatch {
  /// A result the server owes: a PREPARE's or an execution's.
  private struct Owed {
    var sql: String
    var isPrepare: Bool
    var isLedger: Bool
    /// Where to keep its result (see `captured`).
    var capture: Int? = nil
  }

  let connection: PGConnection
  private var owed: [Owed] = []
  /// Results kept by `send(capturing:)`, by the number it returned.
  private(set) var captured: [Int: QueryResult] = [:]
  private var captures = 0
  var unread: Int { owed.count }
  /// Read results every so often, so neither side's socket buffer fills up.
  let syncEvery = 256

  init(connection: PGConnection) { self.connection = connection }

  /// `ledger`: the statement writes ledger rows; a unique violation there is a `LedgerConflict`.
  func send(_ sql: String, _ parameters: [String?] = [], ledger: Bool = false) throws {
    if try connection.send(sql, parameters) { owed.append(Owed(sql: sql, isPrepare: true, isLedger: false)) }
    owed.append(Owed(sql: sql, isPrepare: false, isLedger: ledger))
    if owed.count >= syncEvery { try drain() }
  }

  /// Queues a statement whose result is kept in `captured` under the returned number once drained.
  func send(capturing sql: String, _ parameters: [String?]) throws -> Int {
    captures += 1
    if try connection.send(sql, parameters) { owed.append(Owed(sql: sql, isPrepare: true, isLedger: false)) }
    owed.append(Owed(sql: sql, isPrepare: false, isLedger: false, capture: captures))
    if owed.count >= syncEvery { try drain() }
    return captures
  }

  /// Sends a statement and waits for its result (and every one before it).
  func query(_ sql: String, _ parameters: [String?] = []) throws -> QueryResult {
    try send(sql, parameters)
    guard let result = try drain() else { throw FastPathAbort(reason: "no result") }
    return result
  }

  /// Syncs and reads every pending result; returns the last one. Throws
  /// `FastPathAbort` if any statement failed (`LedgerConflict` for a ledger row written by someone else).
  @discardableResult
  func drain() throws -> QueryResult? {
    try connection.sendSync()
    var last: QueryResult?
    var failure: (any Error)?
    let statements = owed
    owed.removeAll(keepingCapacity: true)
    for statement in statements {
      switch try connection.nextPipelineResult() {
      case .ok(let result):
        last = result
        if let slot = statement.capture { captured[slot] = result }
      case .failed(let error):
        if error.isConnectionLoss { failure = failure ?? error }
        if statement.isPrepare {
          connection.preparationFailed(statement.sql)
        } else {
          connection.executionFailed(statement.sql, error)
        }
        if statement.isLedger && error.sqlState == .uniqueViolation {
          failure = failure ?? LedgerConflict(description: "\(error)")
        }
        failure = failure ?? FastPathAbort(reason: "\(error)")
      case .aborted:
        failure = failure ?? FastPathAbort(reason: "aborted")
        // A PREPARE skipped by the abort never happened.
        if statement.isPrepare { connection.preparationFailed(statement.sql) }
      case .sync: throw PostgresError(message: "sync before the results it follows", context: "pipeline")
      }
    }
    guard case .sync = try connection.nextPipelineResult() else {
      throw PostgresError(message: "expected the end of a pipeline sync", context: "pipeline")
    }
    if let failure { throw failure }
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
