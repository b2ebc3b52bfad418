import Foundation
import Logging
public import SluiceCore
public import SluicePostgres

/// The ledger's statuses (SPEC section 2).
public enum EventStatus: String, Sendable, CaseIterable {
  case applied, rejected, denied, duplicate, dead
}

/// The handling stage: turns stream items into events and applies a batch of
/// them in one transaction with their ledger rows: replayed events are
/// skipped, the policy as of each event's WAL position decides, dedupe keys
/// are honoured, each handler runs under its own savepoint.
public final class BatchProcessor {
  struct Planned {
    var event: Event
    var decision: Decision
  }

  enum Decision {
    case malformed(String)
    case denied(String)
    case allowed
  }

  struct LedgerRow {
    var event: Event
    var status: EventStatus
    var reason: String?
    var attempts: Int
  }

  struct OpenTransaction {
    var xid: UInt32
    var commitLSN: LSN
    var commitTime: PostgresTimestamp
  }

  let connection: PGConnection
  let registry: HandlerRegistry
  let maxAttempts: Int
  let slot: String
  let logger: Logger
  /// Base of the handler retry backoff (doubles per attempt, capped at 5 s).
  var retryBaseMilliseconds = 100
  /// The policy as of the last committed batch.
  public private(set) var policy: Policy
  private var open: OpenTransaction?
  public private(set) var counts: [EventStatus: Int] = [:]
  public private(set) var ignoredChanges = 0
  /// Where committed batches are counted (nil: not counted).
  var metrics: Metrics?
  /// Send each batch in one libpq pipeline first (the fast path).
  var pipelining = true
  /// The highest commit LSN in the ledger (from `sluice.stream_state`): the
  /// fast path does not look up events of later transactions, which cannot be replays.
  var ledgerHighWater: LSN?

  public init(
    connection: PGConnection, registry: HandlerRegistry, policy: Policy, maxAttempts: Int, slot: String,
    logger: Logger
  ) {
    self.connection = connection
    self.registry = registry
    self.policy = policy
    self.maxAttempts = maxAttempts
    self.slot = slot
    self.logger = logger
  }

  /// Applies `items` in one transaction. Returns the end LSN of the last
  /// source transaction the batch completed (nil if it ended none). On error
  /// nothing is committed and the processor is as it was before the call.
  @discardableResult
  public func process(_ items: [StreamItem]) throws -> LSN? {
    var working = policy
    var transaction = open
    var planned: [Planned] = []
    var mirror: [Policy.Change] = []
    var completed: LSN?
    var ignored = 0
    for item in items {
      switch item {
      case .begin(let xid, let commitLSN, let commitTime):
        transaction = OpenTransaction(xid: xid, commitLSN: commitLSN, commitTime: commitTime)
      case .commit(let endLSN, _, _):
        transaction = nil
        completed = endLSN
      case .configChange(let change):
        working.apply(change)
        mirror.append(change)
      case .ignored:
        ignored += 1
      case .insert(let relation, let row, let lsn):
        guard let source = working.sources[relation] else {
          ignored += 1
          continue
        }
        planned.append(
          plan(
            source, row, working, commitLSN: transaction?.commitLSN, committedAt: transaction?.commitTime,
            xid: transaction?.xid, position: lsn))
      }
    }
    if !planned.isEmpty || !mirror.isEmpty {
      let started = ContinuousClock.now
      var tail: [(sql: String, parameters: [String?])] = mirror.map(Self.mirrorStatement)
      let highWater = planned.lazy.compactMap(\.event.commitLSN).max()
      if completed != nil || highWater != nil { tail.append(stateStatement(completed, highWater)) }
      let rows: [LedgerRow]
      if pipelining, let fast = try fastPath(planned, working, tail) {
        rows = fast
      } else {
        rows = try carefulPath(planned, working, tail)
      }
      record(rows, since: started)
      if let highWater { ledgerHighWater = max(ledgerHighWater ?? highWater, highWater) }
    }
    policy = working
    open = transaction
    ignoredChanges += ignored
    return completed
  }

  /// Processes rows read outside the stream (backfill): no commit LSN.
  func processRows(_ rows: [(relation: String, row: Row)]) throws {
    try process(rows.map { .insert(relation: $0.relation, row: $0.row, lsn: .zero) })
  }

  func plan(
    _ source: SourceMapping, _ row: Row, _ policy: Policy, commitLSN: LSN?, committedAt: PostgresTimestamp?,
    xid: UInt32?, position: LSN?
  ) -> Planned {
    let (event, malformed) = source.event(
      from: row, commitLSN: commitLSN, committedAt: committedAt, xid: xid, position: position)
    if let malformed { return Planned(event: event, decision: .malformed(malformed)) }
    switch policy.evaluate(event) {
    case .allow: return Planned(event: event, decision: .allowed)
    case .deny(let reason): return Planned(event: event, decision: .denied(reason))
    }
  }

  /// Fast path: the whole batch in one pipeline, no savepoints. Returns
  /// nil (after rolling back) when it cannot finish exactly; the caller then
  /// takes the careful path.
  private func fastPath(_ planned: [Planned], _ policy: Policy, _ tail: [(sql: String, parameters: [String?])])
    throws -> [LedgerRow]?
  {
    guard !planned.isEmpty else { return nil }
    let (fresh, owners) = try replaysAndOwners(planned, skipPast: ledgerHighWater)
    try connection.enterPipelineMode()
    let batch = PipelineBatch(connection: connection)
    do {
      try batch.send("BEGIN")
      let rows = try ledgerRows(fresh, owners, policy) { handler, event in
        guard let handler else {
          return LedgerRow(event: event, status: .dead, reason: "no handler for \(event.type)", attempts: 0)
        }
        let context = HandlerContext(connection: connection, pipeline: batch)
        switch try handler.handle(event, in: context) {
        case .applied:
          return LedgerRow(event: event, status: .applied, reason: nil, attempts: 1)
        case .rejected(let reason):
          // Its writes may be queued already: only a savepoint can undo them.
          if context.statements > 0 { throw FastPathAbort(reason: "rejected after writing") }
          return LedgerRow(event: event, status: .rejected, reason: reason, attempts: 1)
        }
      } handleRun: { handler, events in
        let context = HandlerContext(connection: self.connection, pipeline: batch)
        let outcomes = try handler.handle(batch: events, in: context)
        guard outcomes.count == events.count else {
          throw FastPathAbort(reason: "\(handler.eventType): \(outcomes.count) outcomes for \(events.count) events")
        }
        return zip(events, outcomes).map { event, outcome in
          switch outcome {
          case .applied: LedgerRow(event: event, status: .applied, reason: nil, attempts: 1)
          case .rejected(let reason): LedgerRow(event: event, status: .rejected, reason: reason, attempts: 1)
          }
        }
      }
      for statement in tail + [ledgerStatement(rows)].compactMap({ $0 }) {
        try batch.send(statement.sql, statement.parameters)
      }
      try batch.send("COMMIT")
      try batch.drain()
      try connection.exitPipelineMode()
      return rows
    } catch {
      batch.discard()
      _ = try? connection.exitPipelineMode()
      guard connection.isHealthy else { throw error }
      _ = try? connection.simpleQuery("ROLLBACK")
      logger.debug("batch redone carefully", metadata: ["why": "\(error)"])
      return nil
    }
  }

  /// Careful path: a savepoint per event, handler retries with backoff.
  private func carefulPath(_ planned: [Planned], _ policy: Policy, _ tail: [(sql: String, parameters: [String?])])
    throws -> [LedgerRow]
  {
    try connection.simpleQuery("BEGIN")
    do {
      var rows: [LedgerRow] = []
      if !planned.isEmpty {
        let (fresh, owners) = try replaysAndOwners(planned)
        rows = try ledgerRows(fresh, owners, policy) { try run($0, $1) }
      }
      for statement in tail + [ledgerStatement(rows)].compactMap({ $0 }) {
        try connection.query(statement.sql, statement.parameters)
      }
      try connection.simpleQuery("COMMIT")
      return rows
    } catch {
      if connection.isHealthy { _ = try? connection.simpleQuery("ROLLBACK") }
      throw error
    }
  }

  private func record(_ rows: [LedgerRow], since started: ContinuousClock.Instant) {
    for row in rows { counts[row.status, default: 0] += 1 }
    metrics?.recordBatch(
      rows.map { ($0.event.type, $0.status, $0.event.committedAt, $0.attempts) },
      seconds: started.duration(to: .now).inSeconds,
      now: Clock.postgresNow())
  }

  /// Events not yet in the ledger, and the dedupe keys earlier events own.
  /// With `skipPast`, events of transactions after it are taken as new without a lookup.
  private func replaysAndOwners(_ planned: [Planned], skipPast highWater: LSN? = nil) throws -> (
    [Planned], [DedupeKey: String]
  ) {
    let suspects = planned.lazy.map(\.event).filter { event in
      guard let highWater, let commit = event.commitLSN else { return true }
      return commit <= highWater
    }
    let seen = suspects.isEmpty ? [] : try alreadyInLedger(Array(suspects))
    let fresh = planned.filter { !seen.contains(LedgerKey($0.event)) }
    let owners = try dedupeOwners(
      fresh.filter { if case .allowed = $0.decision { $0.event.dedupeKey != nil } else { false } }.map(\.event))
    return (fresh, owners)
  }

  /// Decides every fresh event's ledger row; `handle` runs the allowed ones.
  /// With `handleRun`, consecutive allowed events of one batch-capable type
  /// go to it together; events with no effect (denied, duplicate,
  /// malformed) do not break a run, any other allowed event does.
  private func ledgerRows(
    _ fresh: [Planned], _ ownersBefore: [DedupeKey: String], _ policy: Policy,
    handle: ((any EventHandler)?, Event) throws -> LedgerRow,
    handleRun: ((any BatchEventHandler, [Event]) throws -> [LedgerRow])? = nil
  ) throws -> [LedgerRow] {
    var owners = ownersBefore
    var rows: [LedgerRow] = []
    rows.reserveCapacity(fresh.count)
    var inBatch = Set<LedgerKey>()
    var run: (handler: any BatchEventHandler, events: [Event])?
    func flushRun() throws {
      guard let pending = run, let handleRun else { return }
      run = nil
      rows += try handleRun(pending.handler, pending.events)
    }
    for item in fresh {
      let event = item.event
      // The same row twice in one batch (a replayed stretch): once is enough.
      guard inBatch.insert(LedgerKey(event)).inserted else { continue }
      switch item.decision {
      case .malformed(let reason):
        rows.append(LedgerRow(event: event, status: .rejected, reason: reason, attempts: 0))
      case .denied(let reason):
        rows.append(LedgerRow(event: event, status: .denied, reason: reason, attempts: 0))
      case .allowed:
        if let key = event.dedupeKey {
          let dedupe = DedupeKey(type: event.type, actor: event.actor ?? "", key: key)
          if let owner = owners[dedupe] {
            rows.append(
              LedgerRow(
                event: event, status: .duplicate, reason: "dedupe key '\(key)' already used by event \(owner)",
                attempts: 0))
            continue
          }
          owners[dedupe] = "\(event.source)/\(event.id)"
        }
        let handler = registry.handler(for: event.type, sqlFunction: policy.handlers[event.type])
        if handleRun != nil, let batchable = handler as? any BatchEventHandler {
          if run?.handler.eventType == event.type {
            run?.events.append(event)
          } else {
            try flushRun()
            run = (batchable, [event])
          }
          continue
        }
        try flushRun()
        rows.append(try handle(handler, event))
      }
    }
    try flushRun()
    return rows
  }

  /// Runs a handler with retries; connection loss aborts the whole batch.
  func run(_ handler: (any EventHandler)?, _ event: Event) throws -> LedgerRow {
    guard let handler else {
      return LedgerRow(event: event, status: .dead, reason: "no handler for \(event.type)", attempts: 0)
    }
    var backoff = Backoff(baseMilliseconds: retryBaseMilliseconds, capMilliseconds: 5000)
    var lastError = ""
    for attempt in 1...maxAttempts {
      let context = HandlerContext(connection: connection)
      do {
        switch try handler.handle(event, in: context) {
        case .applied:
          try context.commit()
          return LedgerRow(event: event, status: .applied, reason: nil, attempts: attempt)
        case .rejected(let reason):
          try context.rollback()
          return LedgerRow(event: event, status: .rejected, reason: reason, attempts: attempt)
        }
      } catch let error as PostgresError where error.sqlState == "SL001" {
        try context.rollback()
        return LedgerRow(event: event, status: .rejected, reason: error.message, attempts: attempt)
      } catch {
        guard connection.isHealthy else { throw error }
        try context.rollback()
        lastError = "\(error)"
        logger.warning(
          "handler failed",
          metadata: [
            "event_type": "\(event.type)", "event_id": "\(event.id)", "attempt": "\(attempt)", "error": "\(error)",
          ])
        if attempt < maxAttempts {
          usleep(UInt32(backoff.next(unit: Double.random(in: 0.5..<1))) * 1000)
        }
      }
    }
    return LedgerRow(event: event, status: .dead, reason: lastError, attempts: maxAttempts)
  }

  struct LedgerKey: Hashable {
    var source: String
    var id: String
    init(_ event: Event) {
      source = event.source
      id = event.id
    }
    init(source: String, id: String) {
      self.source = source
      self.id = id
    }
  }

  struct DedupeKey: Hashable {
    var type: String
    var actor: String
    var key: String
  }

  /// Events already in the ledger: replays after a crash, skipped silently.
  private func alreadyInLedger(_ events: [Event]) throws -> Set<LedgerKey> {
    let result = try connection.query(
      """
      SELECT l.source, l.event_id FROM sluice.event_log l
      JOIN unnest($1::text[], $2::text[]) AS k(source, event_id) USING (source, event_id)
      """, [PGArray.literal(events.map(\.source)), PGArray.literal(events.map(\.id))])
    return Set(result.rows.map { LedgerKey(source: $0[0] ?? "", id: $0[1] ?? "") })
  }

  /// Which of these (type, actor, dedupe key) an earlier allowed event owns.
  private func dedupeOwners(_ events: [Event]) throws -> [DedupeKey: String] {
    guard !events.isEmpty else { return [:] }
    let result = try connection.query(
      """
      SELECT l.event_type, l.actor, l.dedupe_key, l.source || '/' || l.event_id FROM sluice.event_log l
      JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(event_type, actor, dedupe_key)
        USING (event_type, actor, dedupe_key)
      WHERE l.status IN ('applied', 'rejected', 'dead')
      """,
      [
        PGArray.literal(events.map(\.type)), PGArray.literal(events.map { $0.actor ?? "" }),
        PGArray.literal(events.map(\.dedupeKey)),
      ])
    var owners: [DedupeKey: String] = [:]
    for row in result.rows {
      owners[DedupeKey(type: row[0] ?? "", actor: row[1] ?? "", key: row[2] ?? "")] = row[3] ?? ""
    }
    return owners
  }

  /// All ledger rows of the batch in one statement (nil when there are none).
  private func ledgerStatement(_ rows: [LedgerRow]) -> (sql: String, parameters: [String?])? {
    guard !rows.isEmpty else { return nil }
    return (
      """
      INSERT INTO sluice.event_log
        (source, event_id, event_type, actor, dedupe_key, status, reason, attempts, commit_lsn, committed_at)
      SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                           $8::int[], $9::pg_lsn[], $10::timestamptz[])
      """,
      [
        PGArray.literal(rows.map(\.event.source)), PGArray.literal(rows.map(\.event.id)),
        PGArray.literal(rows.map(\.event.type)), PGArray.literal(rows.map(\.event.actor)),
        PGArray.literal(rows.map(\.event.dedupeKey)), PGArray.literal(rows.map(\.status.rawValue)),
        PGArray.literal(rows.map(\.reason)), PGArray.literal(rows.map { String($0.attempts) }),
        PGArray.literal(rows.map { $0.event.commitLSN?.description }),
        PGArray.literal(rows.map { $0.event.committedAt.map(PostgresTime.iso8601) }),
      ]
    )
  }

  /// The slot's progress and the ledger's high water, written with the batch.
  private func stateStatement(_ completed: LSN?, _ highWater: LSN?) -> (sql: String, parameters: [String?]) {
    (
      """
      INSERT INTO sluice.stream_state (slot, mirror_ready, processed_lsn, ledger_high_water, updated_at)
      VALUES ($1, true, $2, $3, now())
      ON CONFLICT (slot) DO UPDATE SET
        processed_lsn = coalesce(EXCLUDED.processed_lsn, stream_state.processed_lsn),
        ledger_high_water = GREATEST(stream_state.ledger_high_water, EXCLUDED.ledger_high_water),
        updated_at = now()
      """, [slot, completed?.description, highWater?.description]
    )
  }

  static func mirrorStatement(_ change: Policy.Change) -> (sql: String, parameters: [String?]) {
    switch change {
    case .upsert(let table, let key, let row):
      var writer = JSONWriter()
      writer.object(row.sorted { $0.key < $1.key }.map { ($0.key, $0.value.map(ColumnValue.text) ?? .null) })
      return (
        """
        INSERT INTO sluice.policy_mirror (table_name, key, row) VALUES ($1, $2, $3::jsonb)
        ON CONFLICT (table_name, key) DO UPDATE SET row = EXCLUDED.row
        """, [table.rawValue, key, String(decoding: writer.bytes, as: UTF8.self)]
      )
    case .delete(let table, let key):
      return ("DELETE FROM sluice.policy_mirror WHERE table_name = $1 AND key = $2", [table.rawValue, key])
    case .truncate(let table):
      return ("DELETE FROM sluice.policy_mirror WHERE table_name = $1", [table.rawValue])
    }
  }
}
