import SluicePostgres

/// Statements sent in libpq pipeline mode: they go out without waiting, and
/// results are read back at sync points. Any failure aborts the fast path
/// (`FastPathAbort`), and the batch is redone carefully.
///
/// One pipeline may carry two batches: the one whose COMMIT was sent and
/// whose results are not read yet (`generation` lower than the current
/// one), and the one being sent. The results come back in order, so the
/// earlier batch's outcome is read first; a failure there is remembered in
/// `earlierFailure`, whatever the current batch's handlers do with errors.
final class PipelineBatch {
  /// A result the server owes: a PREPARE's or an execution's, or the end of a sync group.
  private enum Owed {
    case statement(sql: String, isPrepare: Bool, isLedger: Bool, capture: Int?, generation: Int)
    case sync
  }

  let connection: PGConnection
  private var owed: [Owed] = []
  private var head = 0
  /// Sync points sent whose results are not read yet.
  private var syncsOwed = 0
  /// Results kept by `send(capturing:)`, by the number it returned.
  private(set) var captured: [Int: QueryResult] = [:]
  private var captures = 0
  /// The batch whose statements are being sent now.
  private(set) var generation = 0
  /// A statement of an earlier batch failed (its COMMIT did not happen).
  private(set) var earlierFailure: (any Error)?
  /// Results of an earlier batch are still unread: its outcome is unknown.
  private(set) var earlierUnread = false
  var unread: Int { owed.count - head }
  /// Read results every so often, so neither side's socket buffer fills up.
  let syncEvery = 256

  init(connection: PGConnection) { self.connection = connection }

  /// The statements sent from now on belong to a new batch.
  func nextBatch() {
    generation += 1
    earlierFailure = nil
    earlierUnread = syncsOwed > 0
  }

  /// `ledger`: the statement writes ledger rows; a unique violation there is a `LedgerConflict`.
  func send(_ sql: String, _ parameters: [String?] = [], ledger: Bool = false) throws {
    try queue(sql, parameters, ledger: ledger, capture: nil)
  }

  /// Queues a statement whose result is kept in `captured` under the returned number once read.
  func send(capturing sql: String, _ parameters: [String?]) throws -> Int {
    captures += 1
    try queue(sql, parameters, ledger: false, capture: captures)
    return captures
  }

  private func queue(_ sql: String, _ parameters: [String?], ledger: Bool, capture: Int?) throws {
    if try connection.send(sql, parameters) {
      owed.append(.statement(sql: sql, isPrepare: true, isLedger: false, capture: nil, generation: generation))
    }
    owed.append(.statement(sql: sql, isPrepare: false, isLedger: ledger, capture: capture, generation: generation))
    if unread >= syncEvery { try drain() }
  }

  /// Sends a statement and waits for its result (and every one before it).
  func query(_ sql: String, _ parameters: [String?] = []) throws -> QueryResult {
    try send(sql, parameters)
    guard let result = try drain() else { throw FastPathAbort(reason: "no result") }
    return result
  }

  /// Ends a sync group without reading its results: they are read by a
  /// later `drain` or `readSyncedGroups`.
  func syncWithoutReading() throws {
    try connection.sendSync()
    owed.append(.sync)
    syncsOwed += 1
  }

  /// Syncs and reads every pending result; returns the last one. Throws
  /// `FastPathAbort` if any statement failed (`LedgerConflict` for a ledger
  /// row written by someone else).
  @discardableResult
  func drain() throws -> QueryResult? {
    try syncWithoutReading()
    return try readSyncedGroups()
  }

  /// Reads the results of every group already synced, leaving the
  /// statements sent since the last sync unread. Throws as `drain` does.
  @discardableResult
  func readSyncedGroups() throws -> QueryResult? {
    var last: QueryResult?
    var failure: (any Error)?
    while syncsOwed > 0 {
      let item = owed[head]
      head += 1
      guard case .statement(let sql, let isPrepare, let isLedger, let capture, let batch) = item else {
        guard case .sync = try connection.nextPipelineResult() else {
          throw PostgresError(message: "expected the end of a pipeline sync", context: "pipeline")
        }
        syncsOwed -= 1
        continue
      }
      var error: (any Error)?
      switch try connection.nextPipelineResult() {
      case .ok(let result):
        last = result
        if let capture { captured[capture] = result }
      case .failed(let failed):
        if isPrepare {
          connection.preparationFailed(sql)
        } else {
          connection.executionFailed(sql, failed)
        }
        if failed.isConnectionLoss {
          error = failed
        } else if isLedger && failed.sqlState == .uniqueViolation {
          error = LedgerConflict(description: "\(failed)")
        } else {
          error = FastPathAbort(reason: "\(failed)")
        }
      case .aborted:
        error = FastPathAbort(reason: "aborted")
        // A PREPARE skipped by the abort never happened.
        if isPrepare { connection.preparationFailed(sql) }
      case .sync: throw PostgresError(message: "sync before the results it follows", context: "pipeline")
      }
      if let error {
        if batch < generation, earlierFailure == nil { earlierFailure = error }
        if failure == nil || (error as? PostgresError)?.isConnectionLoss == true { failure = error }
      }
    }
    earlierUnread = false
    if head > 1024 || head == owed.count {
      owed.removeFirst(head)
      head = 0
    }
    if let failure { throw failure }
    return last
  }

  /// After a failure: read what is still owed, ignoring errors.
  func discard() {
    guard unread > 0 else { return }
    _ = try? drain()
    owed.removeAll()
    head = 0
    syncsOwed = 0
  }
}

/// The fast path cannot finish this batch exactly: redo it the careful way.
struct FastPathAbort: Error, CustomStringConvertible {
  var reason: String
  var description: String { "fast path abandoned: \(reason)" }
}

/// The results of a pipeline could not be read back as sent: the session
/// starts over on a new connection, from the last acknowledged position.
struct PipelineDesync: Error, CustomStringConvertible {
  var description: String
}

/// The batch before, whose COMMIT was sent without waiting, failed: it is
/// redone (carefully) before the current one, which was rolled back.
struct EarlierBatchFailed: Error, CustomStringConvertible {
  var failure: any Error
  var description: String { "the batch before failed: \(failure)" }
}
