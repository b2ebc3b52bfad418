import Foundation
public import Logging
public import SluiceCore
import SluicePostgres

/// One-shot operations behind `sluice dlq …`, `sluice backfill` and `sluice migrate`.
public struct Operations {
  public let configuration: Configuration
  public let registry: HandlerRegistry
  public let logger: Logger

  public init(configuration: Configuration, registry: HandlerRegistry, logger: Logger) {
    self.configuration = configuration
    self.registry = registry
    self.logger = logger
  }

  func connect(_ name: String = "sluice") throws -> PGConnection {
    try PGConnection(conninfo: configuration.databaseURL, applicationName: name)
  }

  public func migrate() throws -> [String] {
    let connection = try connect()
    defer { connection.close() }
    return try Migrator.migrate(
      connection, publication: configuration.publication, outcomesPublication: configuration.outcomesPublication)
  }

  public struct DeadEvent: Sendable {
    public var source: String
    public var eventID: String
    public var eventType: String?
    public var actor: String?
    public var attempts: Int
    public var reason: String?
    public var processedAt: String?
  }

  public func deadEvents() throws -> [DeadEvent] {
    let connection = try connect()
    defer { connection.close() }
    return try connection.query(
      """
      SELECT source, event_id, event_type, actor, attempts, reason, processed_at::text
      FROM sluice.event_log WHERE status = 'dead' ORDER BY processed_at, source, event_id
      """
    ).rows.map {
      DeadEvent(
        source: $0[0] ?? "", eventID: $0[1] ?? "", eventType: $0[2], actor: $0[3], attempts: Int($0[4] ?? "") ?? 0,
        reason: $0[5], processedAt: $0[6])
    }
  }

  /// Runs dead events again: each exactly as it was recorded when it went
  /// dead (never the current contents of its source row), with the verdict
  /// it had (allowed), by the handler its type has now (so that deploying a
  /// handler completes it). Returns each event's new status.
  public func retryDead(id: String?, source: String?) throws -> [(DeadEvent, EventStatus, String?)] {
    let connection = try connect()
    defer { connection.close() }
    let targets = try deadTargets(id: id, source: source)
    let deadline = StatementDeadline(connection)
    defer { deadline.close() }
    let environment = ApplyEnvironment(
      connection: connection, registry: registry, deadline: deadline,
      handlerTimeoutMilliseconds: configuration.handlerTimeoutMilliseconds, logger: logger)
    var results: [(DeadEvent, EventStatus, String?)] = []
    for dead in targets {
      let outcome = try Self.holdingLock(of: dead, on: connection) { try retry(dead, environment) }
      results.append((dead, outcome.0, outcome.1))
    }
    try Self.notifyDeliverer(connection)
    return results
  }

  /// Deliveries queued here (by handlers run from this process) or put back
  /// may sit behind the deliverer's cursor: it looks again when notified.
  static func notifyDeliverer(_ connection: PGConnection) throws {
    try connection.simpleQuery("NOTIFY sluice_outbox")
  }

  /// One `dlq retry` or `discard` per dead event at a time (the daemon never touches dead rows).
  private static func holdingLock<T>(of dead: DeadEvent, on connection: PGConnection, _ body: () throws -> T) throws
    -> T
  {
    let lock = "sluice.dlq.\(dead.source)/\(dead.eventID)"
    try connection.query("SELECT pg_advisory_lock(hashtext($1))", [lock])
    defer { _ = try? connection.query("SELECT pg_advisory_unlock(hashtext($1))", [lock]) }
    return try body()
  }

  private func deadTargets(id: String?, source: String?) throws -> [DeadEvent] {
    let targets = try deadEvents().filter { event in
      (id == nil || event.eventID.bytewiseEquals(id!)) && (source == nil || event.source.bytewiseEquals(source!))
    }
    if let id, targets.isEmpty {
      throw OperationError("no dead event with id \(id)\(source.map { " in \($0)" } ?? "")")
    }
    if let id, targets.count > 1 {
      throw OperationError("event id \(id) is dead in several sources; name one with --source")
    }
    return targets
  }

  private func retry(_ dead: DeadEvent, _ environment: ApplyEnvironment) throws -> (EventStatus, String?) {
    let connection = environment.connection
    let recorded = try connection.query(
      "SELECT event::text FROM sluice.event_log WHERE source = $1 AND event_id = $2 AND status = 'dead'",
      [dead.source, dead.eventID])
    guard let row = recorded.rows.first else { return (.applied, "no longer dead") }
    guard let text = row[0], let event = EventRecord.decode(text) else {
      return (.dead, "no record of the event was kept (dead before Sluice recorded events): discard it")
    }
    let handlerRow = try connection.query(
      "SELECT function, endpoint FROM sluice.handlers WHERE event_type = $1", [event.type]
    )
    .rows.first
    let sqlHandler = Policy.SQLHandler(function: handlerRow?[0] ?? nil, endpoint: handlerRow?[1] ?? nil)
    let choice: HandlerChoice? =
      registry.catalog.choice(for: event.type, in: Policy()) ?? sqlHandler.map(HandlerChoice.init)
    guard let choice else { return (.dead, "no handler for \(event.type)") }
    let unit = ApplyUnit(event: event, work: .handle(choice), metricLabel: event.type)
    let mode = outcomes(connection)
    let careful = CarefulStrategy(environment: environment)
    var backoff = Backoff(baseMilliseconds: 100, capMilliseconds: 5000)
    for attempt in 1...configuration.maxAttempts {
      let outcome = try careful.apply([unit], 0..<1, attempt: attempt) { entries, _ in
        entries.map { resolve(dead, $0.status, $0.reason, attempts: attempt, outcomes: mode) }
      }
      switch outcome {
      case .committed(let entries), .sent(let entries):
        return (entries.first?.status ?? .applied, entries.first?.reason)
      case .stoppedAt, .failed:
        let error = outcome.failure ?? "failed"
        logger.warning(
          "retry failed", metadata: ["event_id": "\(dead.eventID)", "attempt": "\(attempt)", "error": "\(error)"])
        if attempt == configuration.maxAttempts {
          let stillDead = resolve(dead, .dead, error, attempts: attempt, outcomes: mode)
          try connection.query(stillDead.sql, stillDead.parameters)
          return (.dead, error)
        }
        usleep(UInt32(backoff.next(unit: Double.random(in: 0.5..<1))) * 1000)
      }
    }
    return (.dead, nil)
  }

  /// What `dlq` does to outcomes: with outcomes on, the event's outcome
  /// is written (also when retention or an earlier `off` left none); off,
  /// an outcome written while they were on still follows its ledger row
  /// (if this role may update outcomes at all).
  private func outcomes(_ connection: PGConnection) -> Outcomes.Mode {
    configuration.outcomes ? .upsert : Outcomes.mayTouch("UPDATE", on: connection) ? .followExisting : .off
  }

  /// The dead row's new status, and its outcome's; the record is kept only while it stays dead.
  private func resolve(
    _ dead: DeadEvent, _ status: EventStatus, _ reason: String?, attempts: Int, outcomes: Outcomes.Mode
  ) -> Statement {
    Statement(
      sql: Outcomes.with(
        """
        UPDATE sluice.event_log SET status = $3, reason = $4, attempts = attempts + $5, processed_at = clock_timestamp(),
          event = CASE WHEN $3 = 'dead' THEN event END
        WHERE source = $1 AND event_id = $2 AND status = 'dead'
        """, outcomes), parameters: [dead.source, dead.eventID, status.rawValue, reason, String(attempts)])
  }

  /// Marks a dead event as handled without running it: status `rejected`,
  /// reason kept. An id dead in several sources needs `source`.
  public func discardDead(id: String, source: String?) throws -> Int {
    let targets = try deadTargets(id: id, source: source)
    let connection = try connect()
    defer { connection.close() }
    var discarded = 0
    let mode = outcomes(connection)
    for dead in targets {
      // Never lands under a retry's handler writes.
      discarded += try Self.holdingLock(of: dead, on: connection) {
        let result = try connection.query(
          Outcomes.with(
            """
            UPDATE sluice.event_log SET status = 'rejected', processed_at = clock_timestamp(), event = NULL,
              reason = 'discarded from the dead-letter queue; was: ' || coalesce(reason, '')
            WHERE status = 'dead' AND source = $1 AND event_id = $2
            """, mode), [dead.source, dead.eventID])
        // With outcomes the statement returns the ledger rows it changed.
        return mode == .off ? result.affectedRows : Int(result.scalar ?? "") ?? 0
      }
    }
    return discarded
  }

  /// `sluice backfill RELATION`: rows the ledger has not seen, in commit order,
  /// judged by the rules as they stand now.
  public func backfill(relation: String, stop: StopSignal?, bar: ((String) -> Void)? = nil) throws -> Int {
    let connection = try connect()
    defer { connection.close() }
    let reader = try connect("sluice-backfill")
    defer { reader.close() }
    let policy = try PolicyStore.loadFromTables(connection)
    let qualified = relation.contains(".") ? relation : "public." + relation
    guard let source = policy.source(qualified) else {
      throw OperationError("\(qualified) is not a source: register it with sluice.add_source(...)")
    }
    let processor = BatchProcessor(
      connection: connection, registry: registry,
      planner: StreamPlanner(policy: policy, catalog: registry.catalog, signatures: .ed25519),
      maxAttempts: configuration.maxAttempts, handlerTimeoutMilliseconds: configuration.handlerTimeoutMilliseconds,
      slot: configuration.slot, logger: logger)
    processor.sealed = try LedgerPartitions.load(on: connection)
    processor.checksSealedPartitions = true
    processor.outcomes = configuration.outcomes
    try reader.simpleQuery("BEGIN")
    let copy = try Backfill.copy(source: source, reader: reader)
    try reader.simpleQuery("COMMIT")
    let rows = try Backfill.process(
      copy, reader: reader, processor: processor, batchSize: configuration.batchSize, stop: stop,
      progress: BackfillReporter(slot: configuration.slot, logger: logger, bar: bar))
    try Self.notifyDeliverer(connection)
    return rows
  }

  static func typedRow(_ result: QueryResult, _ values: [String?]) -> Row {
    Row(
      values.enumerated().map { index, value in
        (
          result.columns[index],
          value.map { ValueDecoder.decode(.text(ArraySlice(Array($0.utf8))), typeOID: result.types[index]) } ?? .null
        )
      })
  }
}

public struct OperationError: Error, CustomStringConvertible {
  public var description: String
  public init(_ description: String) { self.description = description }
}
