import Glibc
public import Logging
public import SluiceCore
import SluicePostgres

/// `sluice tail`: every decoded change as one JSON line on standard output.
public struct TailOptions: Sendable {
  public var conninfo: String
  /// A named slot (created if missing, position acknowledged after each
  /// printed transaction); nil uses a temporary slot.
  public var slot: String?
  public var publication: String
  /// `schema.table` names to print (nil: all in the publication). When the
  /// publication does not exist, it is created for these tables (or for all tables).
  public var tables: [String]?
  /// Stop after the first transaction that ends at or past this position (pg_recvlogical's --endpos).
  public var endPosition: LSN?

  public init(conninfo: String, slot: String?, publication: String, tables: [String]?, endPosition: LSN? = nil) {
    self.conninfo = conninfo
    self.slot = slot
    self.publication = publication
    self.tables = tables
    self.endPosition = endPosition
  }
}

public final class Tail {
  let options: TailOptions
  let logger: Logger
  let stop: StopSignal
  /// Receives each output chunk; `flush` is called at every commit.
  let write: (UnsafeRawBufferPointer) -> Void
  let flush: () -> Void

  public init(
    options: TailOptions, logger: Logger, stop: StopSignal,
    write: @escaping (UnsafeRawBufferPointer) -> Void, flush: @escaping () -> Void
  ) {
    self.options = options
    self.logger = logger
    self.stop = stop
    self.write = write
    self.flush = flush
  }

  /// Streams until `stop` is set. Connection losses are retried with
  /// backoff; configuration and protocol errors are thrown.
  public func run() throws {
    try preparePublication()
    var tracker: AckTracker? = nil
    var backoff = Backoff()
    var formatter = ChangeFormatter(tables: options.tables)
    var decoder = PgOutputDecoder()
    var wasConnected = false
    while !stop.isSet {
      do {
        let stream = try ReplicationConnection(conninfo: options.conninfo, applicationName: "sluice-tail")
        defer { stream.close() }
        let slot: String
        if let named = options.slot {
          slot = named
          if tracker == nil { tracker = AckTracker(confirmed: try ensureSlot(named, stream)) }
        } else {
          // A temporary slot dies with its connection: what was written while
          // disconnected is not shown (use --slot to see everything).
          slot = "sluice_tail_\(getpid())"
          let created = try stream.createSlot(slot, temporary: true)
          tracker = AckTracker(confirmed: created.consistentPoint)
        }
        guard var ack = tracker else { return }
        ack.reset()
        formatter.reset()
        decoder.reset()
        let version = ReplicationConnection.protocolVersion(serverVersion: stream.connection.serverVersion)
        try stream.startReplication(
          slot: slot, start: ack.confirmed, protocolVersion: version, publications: [options.publication],
          messages: true)
        logger.info(
          wasConnected ? "reconnected, streaming" : "streaming",
          metadata: ["slot": "\(slot)", "from": "\(ack.confirmed)", "proto_version": "\(version)"])
        wasConnected = true
        backoff.reset()
        defer { tracker = ack }
        try pump(stream, &ack, &decoder, &formatter)
        stream.stop()
        return
      } catch let error as PostgresError where error.isConnectionLoss && !stop.isSet {
        let wait = backoff.next(unit: Double.random(in: 0..<1))
        logger.warning("connection lost, reconnecting", metadata: ["error": "\(error)", "retry_in_ms": "\(wait)"])
        stop.sleep(milliseconds: wait)
      } catch let error as ReplicationError where !stop.isSet {
        let wait = backoff.next(unit: Double.random(in: 0..<1))
        logger.warning("stream ended, reconnecting", metadata: ["error": "\(error)", "retry_in_ms": "\(wait)"])
        stop.sleep(milliseconds: wait)
      }
    }
  }

  private func pump(
    _ stream: ReplicationConnection, _ ack: inout AckTracker, _ decoder: inout PgOutputDecoder,
    _ formatter: inout ChangeFormatter
  ) throws {
    let clock = ContinuousClock()
    var lastStatus = clock.now
    var lastSentFlush = ack.confirmed
    let newline: [UInt8] = [0x0A]
    reading: while !stop.isSet {
      if let message = try stream.read(timeoutMilliseconds: 100) {
        switch message {
        case .xLogData(let data):
          ack.received(data.walStart)
          let change = try decoder.decode(data)
          if case .begin = change { ack.began() }
          if let line = try formatter.line(for: change, at: data.walStart) {
            line.withUnsafeBytes(write)
            newline.withUnsafeBytes(write)
          }
          if case .commit(let commit) = change {
            flush()
            // Printed and flushed: the transaction is done for a tail.
            ack.committed(end: commit.endLSN, durable: true)
            if let end = options.endPosition, commit.endLSN >= end { break reading }
          }
        case .keepalive(let keepalive):
          ack.keepalive(walEnd: keepalive.walEnd)
          if let end = options.endPosition, !ack.inFlight, keepalive.walEnd >= end { break reading }
          if keepalive.replyRequested {
            try stream.send(ack.statusUpdate(clientTime: Clock.postgresNow()))
            lastStatus = clock.now
            lastSentFlush = ack.confirmed
          }
        }
      }
      let elapsed = lastStatus.duration(to: clock.now)
      if elapsed > .seconds(10) || (ack.confirmed != lastSentFlush && elapsed > .seconds(1)) {
        try stream.send(ack.statusUpdate(clientTime: Clock.postgresNow()))
        lastStatus = clock.now
        lastSentFlush = ack.confirmed
      }
    }
    flush()
    try? stream.send(ack.statusUpdate(clientTime: Clock.postgresNow()))
  }

  /// Returns the slot's confirmed position, creating the slot if missing.
  private func ensureSlot(_ slot: String, _ stream: ReplicationConnection) throws -> LSN {
    let connection = try PGConnection(conninfo: options.conninfo, applicationName: "sluice-tail")
    defer { connection.close() }
    let result = try connection.query(
      "SELECT confirmed_flush_lsn::text, plugin FROM pg_replication_slots WHERE slot_name = $1", [slot])
    if let row = result.rows.first {
      guard row[1] == "pgoutput" else {
        throw PostgresError(message: "slot \(slot) uses plugin \(row[1] ?? "?"), not pgoutput", context: "tail")
      }
      return row[0].flatMap { LSN($0) } ?? .zero
    }
    let created = try stream.createSlot(slot, temporary: false)
    logger.info("created slot", metadata: ["slot": "\(slot)", "consistent_point": "\(created.consistentPoint)"])
    return created.consistentPoint
  }

  private func preparePublication() throws {
    let connection = try PGConnection(conninfo: options.conninfo, applicationName: "sluice-tail")
    defer { connection.close() }
    let exists = try connection.query("SELECT 1 FROM pg_publication WHERE pubname = $1", [options.publication])
    guard exists.rows.isEmpty else { return }
    let target: String
    if let tables = options.tables {
      target = "TABLE " + tables.map(PGConnection.quoteQualified).joined(separator: ", ")
    } else {
      target = "ALL TABLES"
    }
    try connection.query("CREATE PUBLICATION \(PGConnection.quoteIdentifier(options.publication)) FOR \(target)")
    logger.info("created publication", metadata: ["publication": "\(options.publication)", "for": "\(target)"])
  }
}
