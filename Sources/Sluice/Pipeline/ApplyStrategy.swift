import Logging
import SluiceCore
import SluicePostgres

/// What applying a range of units in one transaction came to. A lost
/// connection is thrown instead: nothing is known about what committed.
enum StrategyOutcome {
  case committed([LedgerEntry])
  /// Fast only: COMMIT was sent and its results are not read yet (`FastStrategy.apply(leavingUnread:)`).
  case sent([LedgerEntry])
  /// Careful only: the entries before `index` committed; its handler failed
  /// with `error`, which may pass on another attempt.
  case stoppedAt(Int, error: HandlerFailure, committed: [LedgerEntry])
  /// Nothing committed; the failure names no event.
  case failed(String)

  /// What failed, if anything did.
  var failure: String? {
    switch self {
    case .committed, .sent: nil
    case .stoppedAt(_, let error, _): error.description
    case .failed(let error): error
    }
  }
}

/// One way to apply `units[range]` in one transaction. `finish` gives the
/// statements that close it (ledger rows, stream state) for the entries it
/// decided; its second argument says whether they decide the whole range
/// (a careful apply that stopped at a failing handler commits only a prefix).
protocol ApplyStrategy {
  func apply(
    _ units: [ApplyUnit], _ range: Range<Int>, attempt: Int, finish: ([LedgerEntry], Bool) -> [Statement]
  ) throws -> StrategyOutcome
}

/// A ledger row that another writer (a concurrent `sluice backfill`) wrote
/// first: the events must be looked up again, not retried.
struct LedgerConflict: Error, CustomStringConvertible {
  var description: String
}

/// The daemon's role may not write the ledger (or, with outcomes on, the
/// outcomes): no event is to blame, so none is retried or goes dead; the
/// daemon stops with the error (its grants need fixing: `sql/roles.sql`).
struct LedgerUnwritable: Error, CustomStringConvertible {
  var description: String
  init(_ error: PostgresError) {
    description =
      "this role may not write the ledger's statement (\(error)): grant it what sql/roles.sql grants sluice_daemon"
  }
}

/// A handler attempt ran past `SLUICE_HANDLER_TIMEOUT_MS`.
struct HandlerTimeout: Error, CustomStringConvertible {
  var milliseconds: Int
  var description: String { "handler timed out after \(milliseconds) ms (SLUICE_HANDLER_TIMEOUT_MS)" }
}

final class FinalFailures {
  var count = 0
}

/// A handler's failure: what is recorded, and whether another attempt may
/// pass (`RetryRule`: a data exception, a constraint, a plain RAISE cannot).
struct HandlerFailure: CustomStringConvertible {
  let description: String
  let isFinal: Bool

  init(_ error: any Error, timeoutMilliseconds: Int) {
    let state = (error as? PostgresError)?.sqlState
    description =
      state == .queryCanceled ? HandlerTimeout(milliseconds: timeoutMilliseconds).description : "\(error)"
    isFinal = RetryRule.isFinal(sqlState: state?.rawValue)
  }
}

/// What the fast strategy's commits left to know: where their commit
/// records are in the local WAL, how far it is flushed, how long waiting
/// for the results of a batch took; and the batch whose COMMIT was sent
/// without waiting, if any.
final class CommitLog {
  /// Commit without waiting for the WAL flush. Off for backfills: their rows
  /// are older than the slot's position, so nothing would bring them back.
  var asynchronous = true
  /// Synchronous standbys are configured: every commit waits for them.
  var waitForStandbys = false
  /// The local WAL insert position read right after the last asynchronous
  /// COMMIT: at or past its commit record's end. Nil until one committed.
  var commitRecord: LSN?
  /// The local WAL flush position read with it.
  var flushed: LSN?
  /// Time spent waiting for the results of batches already sent.
  var wait = Duration.zero
  /// The pipeline that holds a sent batch's unread results (the connection
  /// is in pipeline mode while it is set), and where its WAL positions land.
  var unread: (batch: PipelineBatch, positions: Int)?

  /// Records the WAL positions a batch's COMMIT was followed by.
  func positions(_ result: QueryResult?, asynchronous: Bool) {
    let row = result?.rows.first
    if asynchronous, let record = row?[0].flatMap({ LSN($0) }) { commitRecord = max(commitRecord ?? record, record) }
    if let flush = row?[1].flatMap({ LSN($0) }) { flushed = max(flushed ?? flush, flush) }
  }
}

/// What both strategies share: the apply connection, the handlers, the handler timeout.
struct ApplyEnvironment {
  let connection: PGConnection
  let registry: HandlerRegistry
  let deadline: StatementDeadline
  let handlerTimeoutMilliseconds: Int
  let logger: Logger
  let guards = RejectionGuards()
  let commits = CommitLog()
  /// Handler failures made final since the processor last counted them.
  let finals = FinalFailures()

  /// An event made `dead` by an error no attempt could pass.
  func finalFailure(_ unit: ApplyUnit, _ failure: HandlerFailure) {
    finals.count += 1
    logger.warning(
      "event failed with an error no retry can pass; dead",
      metadata: [
        "event_type": "\(unit.event.type)", "event_id": "\(unit.event.id)", "error": "\(failure)",
      ])
  }

  func handler(_ choice: HandlerChoice, _ type: String) -> (any EventHandler)? {
    switch choice {
    case .swift: registry.handler(for: type)
    case .sql(let function): SQLFunctionHandler(eventType: type, function: function)
    case .webhook(let endpoint): WebhookHandler(eventType: type, endpoint: endpoint)
    }
  }

  /// Errors after which the transaction cannot go on here: thrown, not
  /// reported. Judged by the connection itself, not by SQLSTATE alone: a
  /// handler that relays a remote 08xxx (dblink, postgres_fdw) has failed,
  /// and its connection is fine.
  func mustThrow(_ error: any Error) -> Bool {
    if error is LedgerConflict || error is LedgerUnwritable || error is EarlierBatchFailed || error is PipelineDesync
      || !connection.isHealthy
    {
      return true
    }
    guard let error = error as? PostgresError else { return false }
    return error.sqlState == nil || error.sqlState?.rawValue.hasPrefix("57P") == true
  }

  func rollback() {
    if connection.isHealthy { _ = try? connection.simpleQuery("ROLLBACK") }
  }

  /// The fast path can start without touching the connection outside a
  /// pipeline: no statement to deallocate, no guard to create.
  var pipelineReady: Bool { !connection.hasEvicted && !guards.hasPending }
}

/// The whole range in one libpq pipeline, no savepoints, one round trip per
/// few hundred statements. Any failure (or the handler timeout passing for
/// the range as a whole) rolls back and reports `failed`: the careful
/// strategy then finds out which event it was.
///
/// It commits asynchronously, as Postgres's own apply worker does: COMMIT
/// does not wait for the WAL flush, and the local WAL position read right
/// after it (`CommitLog`) lets the daemon acknowledge the source only once
/// the server's flush has passed it. A crash that loses such a commit loses
/// its ledger rows with it, and the unacknowledged source transactions come again.
struct FastStrategy: ApplyStrategy {
  let environment: ApplyEnvironment

  func apply(
    _ units: [ApplyUnit], _ range: Range<Int>, attempt: Int, finish: ([LedgerEntry], Bool) -> [Statement]
  ) throws -> StrategyOutcome {
    try apply(units, range, attempt: attempt, leavingUnread: false, finish: finish)
  }

  /// `leavingUnread`: send COMMIT and return without reading the results
  /// (`.sent`); the next fast attempt, or the processor's `settle`, reads
  /// them. The next batch's statements follow at once, so Postgres works on
  /// them while the daemon plans the one after. Its COMMIT is sent only once
  /// the results before it are read: a batch never commits after one that failed.
  func apply(
    _ units: [ApplyUnit], _ range: Range<Int>, attempt: Int, leavingUnread: Bool,
    finish: ([LedgerEntry], Bool) -> [Statement]
  ) throws -> StrategyOutcome {
    let connection = environment.connection
    let commits = environment.commits
    let batch: PipelineBatch
    if let unread = commits.unread {
      batch = unread.batch
      batch.nextBatch()
    } else {
      try connection.deallocateEvicted()
      try environment.guards.prepare(connection)
      try connection.enterPipelineMode()
      batch = PipelineBatch(connection: connection)
    }
    let earlier = commits.unread?.positions
    commits.unread = nil
    let asynchronous = commits.asynchronous && !commits.waitForStandbys
    do {
      let (result, _) = try environment.deadline.run(milliseconds: environment.handlerTimeoutMilliseconds) {
        () throws -> (entries: [LedgerEntry], positions: Int) in
        try batch.send("BEGIN")
        try batch.send(asynchronous ? "SET LOCAL synchronous_commit = off" : "SET LOCAL synchronous_commit = on")
        var entries: [LedgerEntry] = []
        entries.reserveCapacity(range.count)
        /// Guarded SQL calls: the entry to correct and where its result (a reason, or NULL) lands.
        var guarded: [(entry: Int, slot: Int)] = []
        for step in ApplyRuns.steps(units[range]) {
          switch step {
          case .record(let index):
            if let entry = units[index].recordedEntry { entries.append(entry) }
          case .handle(let index):
            let unit = units[index]
            if case .handle(.sql(let function)) = unit.work, let wrapper = environment.guards.wrapper(for: function) {
              let slot = try batch.send(
                capturing: "SELECT \(wrapper)($1::jsonb, $2)",
                [unit.event.json(), SQLFunctionHandler.emitContext(unit.event)])
              guarded.append((entries.count, slot))
              entries.append(unit.entry(.applied, reason: nil, attempts: attempt))
            } else {
              entries.append(try handle(unit, batch, attempt: attempt))
            }
          case .run(let indices):
            entries += try handleRun(indices.map { units[$0] }, batch, attempt: attempt)
          }
        }
        if !guarded.isEmpty {
          // The reasons come back before the ledger rows are written: one more round trip.
          try batch.drain()
          for (entry, slot) in guarded {
            guard let reason = batch.captured[slot]?.scalar else { continue }
            entries[entry].status = .rejected
            entries[entry].reason = reason
          }
        }
        for statement in finish(entries, true) {
          try batch.send(statement.sql, statement.parameters, ledger: statement.writesLedger)
        }
        // The batch before must have committed before this one may.
        let waiting = ContinuousClock.now
        try batch.readSyncedGroups()
        if let failure = batch.earlierFailure { throw EarlierBatchFailed(failure: failure) }
        if let earlier { commits.positions(batch.captured[earlier], asynchronous: true) }
        try batch.send("COMMIT")
        let positions = try batch.send(
          capturing: "SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text", [])
        if leavingUnread {
          try batch.syncWithoutReading()
        } else {
          try batch.drain()
          commits.positions(batch.captured[positions], asynchronous: asynchronous)
        }
        commits.wait += waiting.duration(to: .now)
        return (entries, positions)
      }
      if leavingUnread {
        commits.unread = (batch, result.positions)
        return .sent(result.entries)
      }
      try connection.exitPipelineMode()
      return .committed(result.entries)
    } catch {
      batch.discard()
      let exited = (try? connection.exitPipelineMode()) != nil
      if exited { environment.rollback() }
      if !connection.isHealthy { throw error }
      // Results read out of step, or an earlier batch's never read: nothing
      // about what committed can be trusted on this connection.
      guard exited, !batch.earlierUnread else {
        throw PipelineDesync(description: "pipeline results could not be read back: \(error)")
      }
      if let failure = batch.earlierFailure { throw EarlierBatchFailed(failure: failure) }
      if let earlier { commits.positions(batch.captured[earlier], asynchronous: true) }
      if environment.mustThrow(error) { throw error }
      return .failed("\(error)")
    }
  }

  private func handle(_ unit: ApplyUnit, _ batch: PipelineBatch, attempt: Int, savepoint: Bool = false) throws
    -> LedgerEntry
  {
    guard case .handle(let choice) = unit.work, let handler = environment.handler(choice, unit.event.type) else {
      return unit.entry(.dead, reason: "no handler for \(unit.event.type)", attempts: 0)
    }
    let guarded = savepoint || environment.guards.savepointTypes.contains(Bytewise(unit.event.type))
    let context = HandlerContext(
      connection: environment.connection, pipeline: batch, savepoint: guarded, event: unit.event)
    switch try handler.handle(unit.event, in: context) {
    case .applied:
      try context.commit()
      return unit.entry(.applied, reason: nil, attempts: attempt)
    case .rejected(let reason):
      if context.savepointOpen {
        try context.rollback()
      } else if context.statements > 0 {
        // Its writes are queued already, with no savepoint to undo them.
        throw FastPathAbort(reason: "rejected after writing")
      }
      return unit.entry(.rejected, reason: reason, attempts: attempt)
    }
  }

  private func handleRun(_ units: [ApplyUnit], _ batch: PipelineBatch, attempt: Int) throws -> [LedgerEntry] {
    guard let first = units.first, let handler = environment.registry.handler(for: first.event.type),
      let batchHandler = handler as? any BatchEventHandler
    else { throw FastPathAbort(reason: "no batch handler") }
    if environment.guards.eventByEventTypes.contains(Bytewise(first.event.type)) {
      return try units.map { try handle($0, batch, attempt: attempt, savepoint: true) }
    }
    let context = HandlerContext(connection: environment.connection, pipeline: batch)
    let outcomes = try batchHandler.handle(batch: units.map(\.event), in: context)
    guard outcomes.count == units.count else {
      throw FastPathAbort(reason: "\(handler.eventType): \(outcomes.count) outcomes for \(units.count) events")
    }
    // A rejected event queues nothing (SPEC section 9), but its deliveries are
    // queued already, with no savepoint to undo them: the careful path redoes
    // the run event by event, and later runs go event by event here.
    for (unit, outcome) in zip(units, outcomes) where context.emittedFor.contains(HandlerContext.emitKey(unit.event)) {
      guard case .rejected = outcome else { continue }
      environment.guards.batchHandlerRejectedAfterEmitting(type: first.event.type)
      throw FastPathAbort(reason: "\(handler.eventType): rejected an event it emitted for")
    }
    return zip(units, outcomes).map { unit, outcome in
      switch outcome {
      case .applied: unit.entry(.applied, reason: nil, attempts: attempt)
      case .rejected(let reason): unit.entry(.rejected, reason: reason, attempts: attempt)
      }
    }
  }
}

/// One transaction, a savepoint per event, each handler tried once under
/// the handler timeout. At the first handler that fails, the events before
/// it commit and it is reported (`stoppedAt`); no retry, no sleep happens
/// while other events' writes are held.
struct CarefulStrategy: ApplyStrategy {
  let environment: ApplyEnvironment

  func apply(
    _ units: [ApplyUnit], _ range: Range<Int>, attempt: Int, finish: ([LedgerEntry], Bool) -> [Statement]
  ) throws -> StrategyOutcome {
    let connection = environment.connection
    do {
      try connection.deallocateEvicted()
      try connection.simpleQuery("BEGIN")
      var entries: [LedgerEntry] = []
      for index in range {
        let unit = units[index]
        guard case .handle(let choice) = unit.work else {
          if let entry = unit.recordedEntry { entries.append(entry) }
          continue
        }
        guard let handler = environment.handler(choice, unit.event.type) else {
          entries.append(unit.entry(.dead, reason: "no handler for \(unit.event.type)", attempts: 0))
          continue
        }
        let context = HandlerContext(connection: connection, event: unit.event)
        do {
          let (outcome, timedOut) = try environment.deadline.run(milliseconds: environment.handlerTimeoutMilliseconds) {
            try handler.handle(unit.event, in: context)
          }
          if timedOut { throw HandlerTimeout(milliseconds: environment.handlerTimeoutMilliseconds) }
          switch outcome {
          case .applied:
            try context.commit()
            entries.append(unit.entry(.applied, reason: nil, attempts: attempt))
          case .rejected(let reason):
            if context.statements > 0 { environment.guards.swiftHandlerRejectedAfterWriting(type: unit.event.type) }
            try context.rollback()
            entries.append(unit.entry(.rejected, reason: reason, attempts: attempt))
          }
        } catch let error as PostgresError where error.sqlState == .sluiceReject {
          if case .sql(let function) = choice { environment.guards.sqlHandlerRejected(function: function) }
          try context.rollback()
          entries.append(unit.entry(.rejected, reason: error.message, attempts: attempt))
        } catch {
          if environment.mustThrow(error) { throw error }
          let failure = HandlerFailure(error, timeoutMilliseconds: environment.handlerTimeoutMilliseconds)
          try context.rollback()
          if failure.isFinal {
            // It would fail the same way again: dead now, and the rest go on
            // in this transaction, waiting for no retry (SPEC section 8).
            environment.finalFailure(unit, failure)
            entries.append(unit.entry(.dead, reason: failure.description, attempts: attempt))
            continue
          }
          try commit(finish(entries, false), keeping: !entries.isEmpty)
          return .stoppedAt(index, error: failure, committed: entries)
        }
      }
      try commit(finish(entries, true), keeping: true)
      return .committed(entries)
    } catch {
      environment.rollback()
      if environment.mustThrow(error) { throw error }
      // A deferred constraint fails at COMMIT, not in its handler: with one
      // event to run, the failure is that event's (found by review).
      if range.count == 1, let index = range.first, case .handle = units[index].work, error is PostgresError {
        return .stoppedAt(
          index, error: HandlerFailure(error, timeoutMilliseconds: environment.handlerTimeoutMilliseconds),
          committed: [])
      }
      return .failed("\(error)")
    }
  }

  private func commit(_ statements: [Statement], keeping: Bool) throws {
    let connection = environment.connection
    guard keeping else {
      try connection.simpleQuery("ROLLBACK")
      return
    }
    for statement in statements {
      do {
        try connection.query(statement.sql, statement.parameters)
      } catch let error as PostgresError where statement.writesLedger {
        if error.sqlState == .uniqueViolation { throw LedgerConflict(description: "\(error)") }
        if error.sqlState == .insufficientPrivilege { throw LedgerUnwritable(error) }
        throw error
      }
    }
    try connection.simpleQuery("COMMIT")
  }
}
