import Foundation
public import Logging
public import SluiceCore
public import SluicePostgres

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
    return try Migrator.migrate(connection, publication: configuration.publication)
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

  /// Runs dead events' handlers again (current handlers, the verdict they
  /// already had). Returns each event's new status.
  public func retryDead(id: String?, source: String?) throws -> [(DeadEvent, EventStatus, String?)] {
    let connection = try connect()
    defer { connection.close() }
    let policy = try PolicyStore.loadFromTables(connection)
    let processor = BatchProcessor(
      connection: connection, registry: registry, policy: policy, maxAttempts: configuration.maxAttempts,
      slot: configuration.slot, logger: logger)
    let targets = try deadEvents().filter { event in
      (id == nil || event.eventID == id) && (source == nil || event.source == source)
    }
    if let id, targets.isEmpty {
      throw OperationError("no dead event with id \(id)\(source.map { " in \($0)" } ?? "")")
    }
    if id != nil, targets.count > 1 {
      throw OperationError("event id \(id!) is dead in several sources; name one with --source")
    }
    var results: [(DeadEvent, EventStatus, String?)] = []
    for dead in targets {
      try connection.simpleQuery("BEGIN")
      do {
        let outcome = try retry(dead, policy, processor, connection)
        try connection.simpleQuery("COMMIT")
        results.append((dead, outcome.0, outcome.1))
      } catch {
        _ = try? connection.simpleQuery("ROLLBACK")
        throw error
      }
    }
    return results
  }

  private func retry(_ dead: DeadEvent, _ policy: Policy, _ processor: BatchProcessor, _ connection: PGConnection)
    throws -> (EventStatus, String?)
  {
    let ledger = try connection.query(
      """
      SELECT commit_lsn::text,
             (extract(epoch FROM committed_at) * 1000000)::bigint - 946684800000000  -- Postgres microseconds
      FROM sluice.event_log
      WHERE source = $1 AND event_id = $2 AND status = 'dead' FOR UPDATE
      """, [dead.source, dead.eventID])
    guard let ledgerRow = ledger.rows.first else { return (.applied, "no longer dead") }
    guard let mapping = policy.sources[dead.source] else {
      return (.dead, "\(dead.source) is no longer a source")
    }
    let result = try connection.query(
      "SELECT * FROM \(Self.quoteQualified(dead.source)) t WHERE t.\(PGConnection.quoteIdentifier(mapping.idColumn))::text = $1",
      [dead.eventID])
    guard let values = result.rows.first else { return (.dead, "the source row no longer exists") }
    let row = Self.typedRow(result, values)
    let (event, _) = mapping.event(
      from: row, commitLSN: ledgerRow[0].flatMap { LSN($0) }, committedAt: ledgerRow[1].flatMap { Int64($0) },
      xid: nil, position: nil)
    let handler = registry.handler(for: event.type, sqlFunction: policy.handlers[event.type])
    let outcome = try processor.run(handler, event)
    try connection.query(
      """
      UPDATE sluice.event_log SET status = $3, reason = $4, attempts = attempts + $5, processed_at = clock_timestamp()
      WHERE source = $1 AND event_id = $2
      """, [dead.source, dead.eventID, outcome.status.rawValue, outcome.reason, String(outcome.attempts)])
    return (outcome.status, outcome.reason)
  }

  /// Marks dead events as handled without running them: status `rejected`, reason kept.
  public func discardDead(id: String, source: String?) throws -> Int {
    let connection = try connect()
    defer { connection.close() }
    let result = try connection.query(
      """
      UPDATE sluice.event_log SET status = 'rejected', processed_at = clock_timestamp(),
        reason = 'discarded from the dead-letter queue; was: ' || coalesce(reason, '')
      WHERE status = 'dead' AND event_id = $1 AND ($2::text IS NULL OR source = $2)
      """, [id, source])
    return result.affectedRows
  }

  /// `sluice backfill RELATION`: rows the ledger has not seen, in id order,
  /// judged by the rules as they stand now.
  public func backfill(relation: String, stop: StopSignal?) throws -> Int {
    let connection = try connect()
    defer { connection.close() }
    let reader = try connect("sluice-backfill")
    defer { reader.close() }
    let policy = try PolicyStore.loadFromTables(connection)
    let qualified = relation.contains(".") ? relation : "public." + relation
    guard let source = policy.sources[qualified] else {
      throw OperationError("\(qualified) is not a source: register it with sluice.add_source(...)")
    }
    let processor = BatchProcessor(
      connection: connection, registry: registry, policy: policy, maxAttempts: configuration.maxAttempts,
      slot: configuration.slot, logger: logger)
    try reader.simpleQuery("BEGIN")
    defer { _ = try? reader.simpleQuery("COMMIT") }
    return try Backfill.run(
      source: source, reader: reader, processor: processor, batchSize: configuration.batchSize, stop: stop)
  }

  static func quoteQualified(_ name: String) -> String {
    name.split(separator: ".", maxSplits: 1).map { PGConnection.quoteIdentifier(String($0)) }.joined(separator: ".")
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
