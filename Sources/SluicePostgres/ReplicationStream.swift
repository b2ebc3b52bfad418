import CLibPQ
import Glibc
public import SluiceCore

public struct SystemIdentity: Sendable, Equatable {
  public var systemID: String
  public var timeline: Int
  /// The current WAL flush position.
  public var walPosition: LSN
  public var database: String?
}

public struct CreatedSlot: Sendable, Equatable {
  public var name: String
  /// "The WAL location at which the slot became consistent": the first
  /// position the slot will ever stream.
  public var consistentPoint: LSN
  /// The snapshot exported by the slot (with `.export`), valid until the
  /// next command on this connection.
  public var snapshotName: String?
}

public enum ReplicationError: Error, CustomStringConvertible, Sendable {
  /// The server ended the COPY stream (e.g. the walsender was told to stop).
  case streamEnded(String)
  public var description: String {
    switch self {
    case .streamEnded(let why): "replication stream ended by the server: \(why)"
    }
  }
}

/// A logical replication connection: slot commands, START_REPLICATION and
/// the CopyData loop. Blocking, like `PGConnection`: own a thread for it.
public final class ReplicationConnection: @unchecked Sendable {
  public let connection: PGConnection
  private var copyEnded = false

  /// `serverSide`: `.stream` for the daemon's stream, whose reader answers
  /// the walsender at least every second.
  public init(
    conninfo: String, applicationName: String = "sluice", serverSide: PGConnection.ServerSide = .replication
  ) throws {
    connection = try PGConnection(
      conninfo: conninfo, replication: true, applicationName: applicationName, serverSide: serverSide)
  }

  public func close() { connection.close() }

  /// pgoutput protocol version for a server: 1 on 10–13, 2 (adds streaming
  /// of in-progress transactions) on 14, 3 (two-phase) on 15, 4 (parallel
  /// streaming) on 16 and later. Sluice asks for neither streaming nor
  /// two-phase, so every version sends the v1 message set.
  public static func protocolVersion(serverVersion: Int) -> Int {
    switch serverVersion {
    case 160000...: 4
    case 150000..<160000: 3
    case 140000..<150000: 2
    default: 1
    }
  }

  public func identifySystem() throws -> SystemIdentity {
    let result = try connection.simpleQuery("IDENTIFY_SYSTEM")
    guard let position = result.value("xlogpos").flatMap({ LSN($0) }) else {
      throw PostgresError(message: "IDENTIFY_SYSTEM returned no xlogpos", context: "IDENTIFY_SYSTEM")
    }
    return SystemIdentity(
      systemID: result.value("systemid") ?? "", timeline: Int(result.value("timeline") ?? "") ?? 0,
      walPosition: position, database: result.value("dbname"))
  }

  public enum SnapshotAction: String, Sendable {
    case noExport = "NOEXPORT_SNAPSHOT"
    case export = "EXPORT_SNAPSHOT"
  }

  /// Creates a pgoutput slot (the pre-15 syntax, which 14–17 all accept).
  public func createSlot(_ name: String, temporary: Bool, snapshot: SnapshotAction = .noExport) throws -> CreatedSlot {
    let sql =
      "CREATE_REPLICATION_SLOT \(PGConnection.quoteIdentifier(name))\(temporary ? " TEMPORARY" : "") LOGICAL pgoutput \(snapshot.rawValue)"
    let result = try connection.simpleQuery(sql)
    guard let point = result.value("consistent_point").flatMap({ LSN($0) }) else {
      throw PostgresError(message: "no consistent_point in reply", context: "CREATE_REPLICATION_SLOT")
    }
    return CreatedSlot(name: name, consistentPoint: point, snapshotName: result.value("snapshot_name"))
  }

  /// Starts streaming. The server begins at the later of `start` and the
  /// slot's confirmed position; transactions that committed before it are skipped.
  public func startReplication(
    slot: String, start: LSN, protocolVersion: Int, publications: [String], messages: Bool = false
  ) throws {
    var options = [
      "proto_version '\(protocolVersion)'",
      "publication_names \(PGConnection.quoteLiteral(publications.map(PGConnection.quoteIdentifier).joined(separator: ",")))",
    ]
    if messages { options.append("messages 'true'") }
    let sql =
      "START_REPLICATION SLOT \(PGConnection.quoteIdentifier(slot)) LOGICAL \(start) (\(options.joined(separator: ", ")))"
    guard PQsendQuery(connection.handle, sql) == 1 else { throw connection.lastError("START_REPLICATION") }
    guard let result = PQgetResult(connection.handle) else { throw connection.lastError("START_REPLICATION") }
    defer { PQclear(result) }
    guard PQresultStatus(result) == PGRES_COPY_BOTH else {
      throw PGConnection.error(from: result, context: "START_REPLICATION", connection: connection.handle)
    }
    copyEnded = false
  }

  /// The next CopyData message, or nil when `timeoutMilliseconds` pass without one.
  public func read(timeoutMilliseconds: Int32) throws -> ReplicationMessage? {
    let clock = ContinuousClock()
    let deadline = clock.now.advanced(by: .milliseconds(Int(timeoutMilliseconds)))
    while true {
      var buffer: UnsafeMutablePointer<CChar>? = nil
      let length = PQgetCopyData(connection.handle, &buffer, 1)
      if length > 0, let buffer {
        defer { PQfreemem(buffer) }
        let bytes = [UInt8](UnsafeRawBufferPointer(start: buffer, count: Int(length)))
        return try ReplicationMessage.decode(bytes)
      }
      if length == -1 { throw endOfCopy() }
      if length < -1 { throw connection.lastError("read CopyData") }
      // Nothing buffered: wait for the socket, then let libpq read what arrived.
      let left = clock.now.duration(to: deadline)
      guard left > .zero else { return nil }
      let milliseconds = Int32(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000)
      var descriptor = pollfd(fd: connection.socket, events: Int16(POLLIN), revents: 0)
      let ready = poll(&descriptor, 1, max(milliseconds, 1))
      if ready < 0 && errno != EINTR {
        throw PostgresError(message: "poll failed: errno \(errno)", context: "read CopyData")
      }
      if ready == 0 { return nil }
      guard PQconsumeInput(connection.handle) == 1 else { throw connection.lastError("read CopyData") }
    }
  }

  /// The server sent CopyDone: collect the final result to say why.
  private func endOfCopy() -> any Error {
    copyEnded = true
    var failure: PostgresError?
    while let result = PQgetResult(connection.handle) {
      let status = PQresultStatus(result)
      if status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK && failure == nil {
        failure = PGConnection.error(from: result, context: "replication stream", connection: connection.handle)
      }
      PQclear(result)
    }
    return failure ?? ReplicationError.streamEnded("CopyDone")
  }

  public func send(_ update: StandbyStatusUpdate) throws {
    try connection.putCopyData(update.encode())
  }

  /// Ends the stream cleanly: CopyDone, then drain what the server still sends.
  public func stop(timeoutMilliseconds: Int32 = 2000) {
    guard !copyEnded else { return }
    copyEnded = true
    guard (try? connection.putCopyEnd()) != nil else { return }
    let clock = ContinuousClock()
    let deadline = clock.now.advanced(by: .milliseconds(Int(timeoutMilliseconds)))
    while clock.now < deadline {
      var buffer: UnsafeMutablePointer<CChar>? = nil
      let length = PQgetCopyData(connection.handle, &buffer, 1)
      if let buffer { PQfreemem(buffer) }
      if length == -1 {
        while let result = PQgetResult(connection.handle) { PQclear(result) }
        return
      }
      if length < -1 { return }
      if length == 0 {
        var descriptor = pollfd(fd: connection.socket, events: Int16(POLLIN), revents: 0)
        _ = poll(&descriptor, 1, 100)
        guard PQconsumeInput(connection.handle) == 1 else { return }
      }
    }
  }
}
