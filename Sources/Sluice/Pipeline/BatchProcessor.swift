import Foundation
import Logging
public import SluiceCore
public import SluicePostgres

/// The handling stage's shell: plans a batch (`StreamPlanner`, pure), looks
/// up replays and dedupe owners, then executes the `ApplySchedule` (pure)
/// with the fast and careful strategies and, for events that fail, alone
/// with counted attempts. It decides nothing itself.
public final class BatchProcessor {
  let connection: PGConnection
  let registry: HandlerRegistry
  let maxAttempts: Int
  let slot: String
  let logger: Logger
  let environment: ApplyEnvironment
  private let fast: FastStrategy
  private let careful: CarefulStrategy
  /// Base of the retry backoff of an event retried alone (doubles, capped at 5 s).
  var retryBaseMilliseconds = 100
  private(set) var planner: StreamPlanner
  public var policy: Policy { planner.policy }
  public private(set) var counts: [EventStatus: Int] = [:]
  public private(set) var ignoredChanges = 0
  /// Where committed batches are counted (nil: not counted).
  var metrics: DaemonMetrics?
  /// Whether replays are noted for retention (SPEC 10): off for a role not
  /// granted sluice.retention_replays, whose batches must not fail for it.
  var notesReplays = true
  /// Try each range in one libpq pipeline first (the fast path).
  var pipelining = true
  /// The highest commit LSN of this slot's events in the ledger when the
  /// session started (`sluice.stream_state`): events of later transactions
  /// cannot be replays and are not looked up. Not advanced during the
  /// session: the stream does not repeat itself within one.
  var ledgerHighWater: LSN?
  /// The ledger's sealed partitions, as far as this process knows them
  /// (`LedgerPartitions`): events they cannot hold are looked up only in
  /// the hot partition, or not at all above the high water.
  var sealed: SealedLedger = .unknown
  /// A second session for looking events up in the sealed partitions while
  /// a batch sent ahead is still in `connection`'s pipeline (nil: settle
  /// that batch first and ask on `connection`). Closed with the processor.
  var sealedLookups: PGConnection?
  /// This process does not seal the ledger (`sluice backfill`): a partition
  /// may be sealed between its lookups and its inserts, so each transaction
  /// that writes ledger rows checks the sealed partitions too.
  var checksSealedPartitions = false
  /// `SLUICE_OUTCOMES`: every ledger row with an actor gets its outcome, in the same statement.
  var outcomes = false
  /// Events in the hot ledger partition: counted when the session starts,
  /// then raised by every batch that commits (the daemon seals it when full).
  var hotEvents = 0
  /// How many of the next events run alone: after the daemon or its session
  /// died mid-batch, the event that did it is among them (the batch sizes
  /// are the same, and every event before that batch has its ledger row).
  var isolateNext = 0
  /// The last session died outside any counted attempt (see `Ledger.beginAttempt`).
  var uncountedCrash = false
  /// Called whenever work progresses (retries included), to feed the watchdog.
  var heartbeat: () -> Void = {}
  /// A batch registered a new source: the daemon runs its backfill next (and resets this).
  var registeredSources = false
  /// Set to abandon a batch during a retry's backoff (shutdown).
  var stop: StopSignal?

  public init(
    connection: PGConnection, registry: HandlerRegistry, planner: StreamPlanner, maxAttempts: Int,
    handlerTimeoutMilliseconds: Int, slot: String, logger: Logger, tick: @escaping @Sendable () -> Void = {}
  ) {
    self.connection = connection
    self.registry = registry
    self.planner = planner
    self.maxAttempts = maxAttempts
    self.slot = slot
    self.logger = logger
    environment = ApplyEnvironment(
      connection: connection, registry: registry, deadline: StatementDeadline(connection, tick: tick),
      handlerTimeoutMilliseconds: handlerTimeoutMilliseconds, logger: logger)
    fast = FastStrategy(environment: environment)
    careful = CarefulStrategy(environment: environment)
  }

  deinit {
    environment.deadline.close()
    sealedLookups?.close()
  }

  /// What a batch came to, for the acknowledgement.
  public struct Applied: Equatable {
    /// The end LSN of the last source transaction the batch completed (nil if it ended none).
    public var completed: LSN?
    /// Set when some of it committed asynchronously: durable once the local
    /// WAL flush reaches this position.
    public var commitRecord: LSN?
    /// The local WAL flush position last seen.
    public var flushed: LSN?
  }

  /// Where the handling stage's time went, since the session started.
  public struct StageTimes {
    /// Planning, replay and dedupe lookups.
    public var plan = Duration.zero
    /// Executing the schedule: handlers, ledger rows, commits.
    public var apply = Duration.zero
    public var batches = 0
  }
  public private(set) var times = StageTimes()
  /// Time spent in COMMIT round trips of the fast path.
  public var commitWait: Duration { environment.commits.wait }

  /// Applies `items`. Returns what became final during the call: with
  /// `leaveUnread`, a batch applied by the fast path is final only once the
  /// next call (or `settle`) has read its COMMIT's result. Throws on a lost
  /// connection (nothing after the last commit is kept; the batch comes again).
  @discardableResult
  public func process(_ items: [StreamItem]) throws -> Applied {
    let planning = ContinuousClock.now
    let plan = planner.plan(items)
    times.plan += planning.duration(to: .now)
    ignoredChanges += plan.ignored
    if !plan.isEmpty {
      times.batches += 1
      try apply(
        plan,
        tail: plan.mirrorChanges.map { Ledger.mirror($0, slot: slot) }
          + plan.registeredSources.map { Ledger.pendingBackfill($0.relation, xid: $0.xid, slot: slot) },
        leavingUnread: leaveUnread)
      registeredSources = registeredSources || !plan.registeredSources.isEmpty
    }
    return takeApplied()
  }

  /// Reads the result of a batch whose COMMIT was sent without waiting (if
  /// any) and returns what became final. Call it before using the
  /// connection for anything else, and when the stream is idle.
  public func settle() throws -> Applied {
    try settleUnread()
    return takeApplied()
  }

  /// A batch sent by the fast path whose results are not read yet.
  private struct Unsettled {
    var plan: BatchPlan
    var tail: [Statement]
    var entries: [LedgerEntry]
    var started: ContinuousClock.Instant
  }
  private var unsettled: Unsettled?
  /// Time spent in `settleUnread`.
  private var settling = Duration.zero
  /// A batch was sent ahead and its result is not read yet.
  var hasUnsettled: Bool { unsettled != nil }
  /// The end LSN of the last source transaction that became final and was not reported yet.
  private var finalThrough: LSN?
  /// Let the fast path send the next batch before reading this one's result.
  var leaveUnread = true

  private func takeApplied() -> Applied {
    defer {
      finalThrough = nil
      environment.commits.commitRecord = nil
    }
    return Applied(
      completed: finalThrough, commitRecord: environment.commits.commitRecord, flushed: environment.commits.flushed)
  }

  private func settleUnread() throws {
    guard let batch = unsettled else { return }
    unsettled = nil
    let started = ContinuousClock.now
    defer { settling += started.duration(to: .now) }
    let commits = environment.commits
    // Its results went with a fast attempt that failed before reading them
    // (a lost connection): its outcome is unknown, so it is not final. The
    // next session replays it from the last acknowledged position.
    guard let unread = commits.unread else { return }
    commits.unread = nil
    do {
      let waiting = ContinuousClock.now
      _ = try environment.deadline.run(milliseconds: environment.handlerTimeoutMilliseconds) {
        try unread.batch.readSyncedGroups()
      }
      commits.wait += waiting.duration(to: .now)
      try connection.exitPipelineMode()
      commits.positions(unread.batch.captured[unread.positions], asynchronous: true)
    } catch {
      unread.batch.discard()
      let exited = (try? connection.exitPipelineMode()) != nil
      if exited { environment.rollback() }
      if !connection.isHealthy { throw error }
      guard exited, unread.batch.unread == 0 else {
        throw PipelineDesync(description: "pipeline results could not be read back: \(error)")
      }
      if error is LedgerConflict == false, environment.mustThrow(error) { throw error }
      return try redo(batch, after: error)
    }
    finished(batch)
  }

  /// Redoes a batch sent ahead that did not commit, without sending ahead.
  /// Called while a later batch is being applied: a conflict the redo
  /// gives up on is not that batch's, which would look itself up again and
  /// commit past this one, whose events were never applied. The session
  /// starts over from the last acknowledged position instead.
  private func redo(_ batch: Unsettled, after failure: any Error) throws {
    logger.debug("a batch sent ahead failed; redoing it", metadata: ["why": "\(failure)"])
    do {
      try apply(batch.plan, tail: batch.tail, leavingUnread: false)
    } catch let conflict as LedgerConflict {
      throw PipelineDesync(description: "a batch sent ahead could not be redone: \(conflict)")
    }
  }

  private func finished(_ batch: Unsettled) {
    record(batch.entries, since: batch.started)
    if let end = batch.plan.completed { finalThrough = end }
  }

  /// With synchronous standbys configured (`synchronous_standby_names`), a
  /// commit is durable only once they have it: the local WAL flush says
  /// nothing about them, so batches commit synchronously.
  func synchronousStandbys(_ names: String) {
    let configured = !names.trimmingCharacters(in: .whitespaces).isEmpty
    if configured != environment.commits.waitForStandbys {
      logger.info(
        configured
          ? "synchronous standbys are configured: batches commit synchronously"
          : "no synchronous standbys: batches commit asynchronously, acknowledged once flushed",
        metadata: ["synchronous_standby_names": "\(names)"])
    }
    environment.commits.waitForStandbys = configured
  }

  /// The server's WAL flush position now (for asynchronous commits waiting to be acknowledged).
  func localFlush() throws -> LSN? {
    try settleUnread()
    return try connection.query("SELECT pg_current_wal_flush_lsn()::text").scalar.flatMap { LSN($0) }
  }

  /// Processes rows read outside the stream (backfill): no commit LSN, and
  /// committed synchronously, since no source transaction will bring them back.
  func processRows(_ rows: [StreamPlanner.ReadRow]) throws {
    try settleUnread()
    let plan = planner.plan(rows: rows)
    ignoredChanges += plan.ignored
    environment.commits.asynchronous = false
    defer { environment.commits.asynchronous = true }
    try apply(plan, tail: [], leavingUnread: false)
  }

  private func apply(_ plan: BatchPlan, tail: [Statement], leavingUnread: Bool) throws {
    let started = ContinuousClock.now
    var committed: [LedgerEntry] = []
    var sent = false
    defer { if !sent { record(committed, since: started) } }
    var window: BatchPlan.ReplayWindow = ledgerHighWater.map { .through($0) } ?? .none
    var conflicts = 0
    while true {
      do {
        sent = try execute(plan, tail: tail, window: window, leavingUnread: leavingUnread, into: &committed)
        if sent {
          unsettled = Unsettled(plan: plan, tail: tail, entries: committed, started: started)
        } else if let end = plan.completed {
          finalThrough = end
        }
        return
      } catch let error as EarlierBatchFailed {
        // The batch sent before this one did not commit, so neither did this
        // one: redo that one without sending ahead, then this one from the start.
        guard let earlier = unsettled else { throw error.failure }
        unsettled = nil
        try redo(earlier, after: error.failure)
        committed.removeAll()
      } catch is LedgerConflict {
        // Someone else (`sluice backfill`) wrote some of these events: look every one up.
        // Or an outcome written by hand stood where one of theirs goes: it goes.
        if outcomes { try Outcomes.deleteOrphans(plan.candidates.map(\.event), on: connection) }
        conflicts += 1
        guard conflicts < 3 else {
          throw LedgerConflict(description: "ledger rows kept appearing under the batch; starting over")
        }
        logger.debug("ledger rows written concurrently; looking the batch up again")
        window = .all
      }
    }
  }

  /// Executes the plan's schedule. Returns true when its only attempt was a
  /// fast one sent without reading its result (`leavingUnread`): then it is
  /// not final until `settleUnread`.
  private func execute(
    _ plan: BatchPlan, tail: [Statement], window: BatchPlan.ReplayWindow, leavingUnread: Bool,
    into committed: inout [LedgerEntry]
  ) throws -> Bool {
    let looking = ContinuousClock.now
    let settledBefore = settling
    // Lookups read the ledger: the batch sent before must be final first.
    let sealed = self.sealed
    let everywhere = window == .all
    let sealedSuspects = plan.sealedSuspects(window, mayHold: sealed.mayHold)
    if sealedLookups == nil, !sealedSuspects.isEmpty { try settleUnread() }
    var seen = try Ledger.seenSealed(sealedSuspects, sealed: sealed, on: sealedLookups ?? connection)
    let replaySuspects = plan.replaySuspects(window)
    if !replaySuspects.isEmpty { try settleUnread() }
    seen.formUnion(try Ledger.seen(replaySuspects, sealed: sealed, everywhere: everywhere, on: connection))
    let ownerSuspects = plan.ownerSuspects(seen: seen)
    if !ownerSuspects.isEmpty { try settleUnread() }
    let owners = try Ledger.owners(ownerSuspects, sealed: sealed, everywhere: everywhere, on: connection)
    let units = plan.units(seen: seen, owners: owners)
    // Replays' rows are for retention to find later (SPEC 10): noted with the batch.
    var tail = tail
    if !seen.isEmpty, notesReplays,
      let note = Retention.noteReplays(plan.candidates.map(\.event).filter { seen.contains(LedgerKey($0)) })
    {
      tail.append(note)
    }
    let applying = ContinuousClock.now
    // Reading the batch sent before is waiting (`commitWait`), not planning.
    times.plan += looking.duration(to: applying) - (settling - settledBefore)
    defer { times.apply += applying.duration(to: .now) }
    let isolated = min(isolateNext, units.count)
    var schedule = ApplySchedule(count: units.count, isolated: isolated, pipelining: pipelining)
    let sendAhead = leavingUnread && isolated == 0 && environment.pipelineReady
    if !sendAhead { try settleUnread() }
    var tailWritten = false
    let before = committed.count
    var partly: Bool { committed.count > before }
    while let attempt = schedule.next {
      switch attempt {
      case .fast(let range), .careful(let range):
        let whole = range == units.indices && !partly
        let finish = { (entries: [LedgerEntry], decidesRange: Bool) -> [Statement] in
          // Only a commit that decides every event of the batch may record the
          // batch as complete: the mirror's position makes a later session skip
          // every transaction before it as applied whole.
          let complete = whole && decidesRange
          var statements = self.ledgerWrites(entries)
          if complete { statements += tail }
          let completed = complete ? plan.completed : nil
          let highWater = Self.highWater(entries)
          if completed != nil || highWater != nil {
            statements.append(
              Ledger.state(slot: self.slot, completed: completed, highWater: highWater, mirrorLSN: completed))
          }
          return statements
        }
        let outcome: StrategyOutcome
        if case .fast = attempt {
          let earlier = unsettled
          outcome = try fast.apply(units, range, attempt: 1, leavingUnread: sendAhead && whole, finish: finish)
          // It returned: the batch sent before it, whose result it read first, committed.
          if let earlier {
            unsettled = nil
            finished(earlier)
          }
        } else {
          try settleUnread()
          outcome = try careful.apply(units, range, attempt: 1, finish: finish)
          countFinalFailures()
        }
        switch outcome {
        case .sent(let entries):
          committed += entries
          return true
        case .committed(let entries):
          committed += entries
          tailWritten = tailWritten || whole
          schedule.report(.committed)
        case .stoppedAt(let index, let error, let entries):
          committed += entries
          try countFailedAttempt(units[index], error: error.description)
          schedule.report(.stoppedAt(index))
        case .failed(let error):
          logger.debug("batch part redone", metadata: ["events": "\(range.count)", "why": "\(error)"])
          schedule.report(.failed)
        }
      case .alone(let index):
        try settleUnread()
        committed.append(try applyAlone(units[index], afterCrash: index < isolated))
        schedule.report(.committed)
      }
      heartbeat()
    }
    isolateNext -= isolated
    if isolateNext == 0 { uncountedCrash = false }
    if !tailWritten && (!tail.isEmpty || plan.completed != nil) {
      try settleUnread()
      try transaction(
        tail + [Ledger.state(slot: slot, completed: plan.completed, highWater: nil, mirrorLSN: plan.completed)])
    }
    return false
  }

  private static func highWater(_ entries: [LedgerEntry]) -> LSN? {
    entries.lazy.compactMap(\.event.commitLSN).max()
  }

  private func countFinalFailures() {
    for _ in 0..<environment.finals.count { metrics?.handlerFailed() }
    environment.finals.count = 0
  }

  /// The careful strategy's one try counts as the event's first attempt.
  private func countFailedAttempt(_ unit: ApplyUnit, error: String) throws {
    metrics?.handlerFailed()
    logger.warning(
      "handler failed",
      metadata: ["event_type": "\(unit.event.type)", "event_id": "\(unit.event.id)", "error": "\(error)"])
    _ = try Ledger.beginAttempt(unit.event, uncountedCrash: false, on: connection)
    try Ledger.failAttempt(unit.event, error: error, on: connection)
  }

  /// One event by itself until it has a ledger row: each attempt counted in
  /// the journal before it runs, failures retried with backoff outside any
  /// transaction, `dead` after `maxAttempts`. `afterCrash`: it is isolated
  /// because the session before died during a batch that may have held it.
  private func applyAlone(_ unit: ApplyUnit, afterCrash: Bool) throws -> LedgerEntry {
    let event = unit.event
    if let entry = unit.recordedEntry {
      try commitEnsuringARow(entry)
      return entry
    }
    var backoff = Backoff(baseMilliseconds: retryBaseMilliseconds, capMilliseconds: 5000)
    while true {
      let (attempt, priorError) = try Ledger.beginAttempt(
        event, uncountedCrash: afterCrash && uncountedCrash, on: connection)
      if attempt > maxAttempts {
        let entry = unit.entry(.dead, reason: priorError ?? "failed \(maxAttempts) times", attempts: attempt - 1)
        try commitEnsuringARow(entry)
        return entry
      }
      heartbeat()
      let outcome = try careful.apply([unit], 0..<1, attempt: attempt) { entries, _ in
        ledgerWrites(entries) + [Ledger.endAttempts(event)]
          + (Self.highWater(entries).map { [Ledger.state(slot: slot, completed: nil, highWater: $0, mirrorLSN: nil)] }
            ?? [])
      }
      let error: String
      var final = false
      switch outcome {
      case .committed(let entries), .sent(let entries):
        countFinalFailures()  // the careful try made it dead at once
        return entries[0]
      case .stoppedAt(_, let failure, _):
        error = failure.description
        final = failure.isFinal  // failed at COMMIT (a deferred constraint): no retry passes either
      case .failed: error = outcome.failure ?? "failed"
      }
      metrics?.handlerFailed()
      logger.warning(
        "event failed",
        metadata: [
          "event_type": "\(event.type)", "event_id": "\(event.id)", "attempt": "\(attempt)",
          "error": "\(error)",
        ])
      try Ledger.failAttempt(event, error: error, on: connection)
      if attempt >= maxAttempts || final {
        let entry = unit.entry(.dead, reason: error, attempts: attempt)
        try commitEnsuringARow(entry)
        return entry
      }
      try pause(milliseconds: backoff.next(unit: Double.random(in: 0.5..<1)))
    }
  }

  /// Writes an outcome known without running a handler; if even that row
  /// cannot be written, a minimal dead row that always fits.
  private func commitEnsuringARow(_ entry: LedgerEntry) throws {
    let state = Self.highWater([entry]).map { Ledger.state(slot: slot, completed: nil, highWater: $0, mirrorLSN: nil) }
    do {
      try transaction(ledgerWrites([entry]) + [Ledger.endAttempts(entry.event)] + [state].compactMap { $0 })
    } catch let error as PostgresError where !error.isConnectionLoss && connection.isHealthy {
      if error.sqlState == .uniqueViolation { throw LedgerConflict(description: "\(error)") }
      if error.sqlState == .insufficientPrivilege { throw LedgerUnwritable(error) }
      logger.error("ledger row cannot be written; recording a minimal dead row", metadata: ["error": "\(error)"])
      func minimal(_ outcome: Outcomes.Mode) throws {
        try transaction(
          [
            Ledger.minimalDead(
              entry.event, reason: "the ledger row could not be written: \(error)", attempts: entry.attempts,
              outcomes: outcome),
            Ledger.endAttempts(entry.event),
          ] + [state].compactMap { $0 })
      }
      do {
        try minimal(outcomes ? .insert : .off)
      } catch let failure as PostgresError
        where outcomes && !failure.isConnectionLoss && connection.isHealthy && failure.sqlState != .uniqueViolation
        && failure.sqlState != .insufficientPrivilege
      {
        // The row that always fits must never be stopped by its outcome.
        logger.error(
          "the minimal dead row's outcome cannot be written; recording it without", metadata: ["error": "\(failure)"])
        try minimal(.off)
      }
    }
  }

  private func transaction(_ statements: [Statement]) throws {
    try connection.simpleQuery("BEGIN")
    do {
      for statement in statements { try connection.query(statement.sql, statement.parameters) }
      try connection.simpleQuery("COMMIT")
    } catch {
      if connection.isHealthy { _ = try? connection.simpleQuery("ROLLBACK") }
      throw error
    }
  }

  /// Sleeps between retries, holding no transaction, feeding the watchdog.
  private func pause(milliseconds: Int) throws {
    var left = milliseconds
    while left > 0 {
      if stop?.isSet == true { throw ApplyInterrupted() }
      let step = min(left, 100)
      usleep(UInt32(step) * 1000)
      left -= step
      heartbeat()
    }
  }

  /// The statements that write these ledger rows.
  private func ledgerWrites(_ entries: [LedgerEntry]) -> [Statement] {
    guard !entries.isEmpty else { return [] }
    return [Ledger.insert(entries, outcomes: outcomes ? .insert : .off)]
      + (checksSealedPartitions ? [Ledger.checkSealed(entries)] : [])
  }

  private func record(_ entries: [LedgerEntry], since started: ContinuousClock.Instant) {
    guard !entries.isEmpty else { return }
    hotEvents += entries.count
    for entry in entries { counts[entry.status, default: 0] += 1 }
    metrics?.recordBatch(entries, seconds: started.duration(to: .now).inSeconds, now: Clock.postgresNow())
  }
}

/// A stop came while an event waited to be retried: the batch is abandoned
/// (not acknowledged); the events before it committed, the rest come again.
struct ApplyInterrupted: Error, CustomStringConvertible {
  var description: String { "stopped while an event waited to be retried" }
}
