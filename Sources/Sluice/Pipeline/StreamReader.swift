import Foundation
import Logging
import SluiceCore
import SluicePostgres
import Synchronization

/// The confirmed-position bookkeeping shared by the two stages: the reader
/// records begins, commits and keepalives; the processor records what is durable.
final class SharedAckTracker: Sendable {
  private let tracker: Mutex<AckTracker>

  init(confirmed: LSN) { tracker = Mutex(AckTracker(confirmed: confirmed)) }

  func update<T>(_ body: (inout AckTracker) -> T) -> T { tracker.withLock { body(&$0) } }
  var confirmed: LSN { tracker.withLock { $0.confirmed } }
}

/// The reading stage: one thread that owns the replication connection,
/// decodes pgoutput into `StreamItem`s and answers the server. It keeps
/// reading while the processor commits, up to the queue's capacity.
/// pgoutput sent in-progress transaction messages that Sluice never requested.
struct StreamingNotRequested: Error, CustomStringConvertible {
  var description: String { "the server streamed an in-progress transaction, which Sluice never requests" }
}

final class StreamReader: @unchecked Sendable {
  let stream: ReplicationConnection
  let queue: BlockingQueue<StreamItem>
  let ack: SharedAckTracker
  let logger: Logger
  /// Set to end the read loop (shutdown or the processor failed).
  let halt = StopSignal()
  private let finished = DispatchSemaphore(value: 0)
  private(set) var failure: (any Error)?
  private(set) var lastStatusSent = ContinuousClock.now
  private var lastFlushSent: LSN

  init(stream: ReplicationConnection, queue: BlockingQueue<StreamItem>, ack: SharedAckTracker, logger: Logger) {
    self.stream = stream
    self.queue = queue
    self.ack = ack
    self.logger = logger
    self.lastFlushSent = ack.confirmed
  }

  func start() {
    let thread = Thread { [self] in
      run()
      finished.signal()
    }
    thread.name = "sluice-reader"
    thread.start()
  }

  /// Stops reading and waits for the thread to end.
  func stopAndWait() {
    halt.set()
    queue.close()
    finished.wait()
  }

  private func run() {
    var decoder = PgOutputDecoder()
    var relations = RelationCache()
    do {
      while !halt.isSet {
        if let message = try stream.read(timeoutMilliseconds: 100) {
          switch message {
          case .xLogData(let data):
            let change = try decoder.decode(data)
            guard try handle(change, at: data.walStart, &relations) else { return }
          case .keepalive(let keepalive):
            ack.update { $0.keepalive(walEnd: keepalive.walEnd) }
            if keepalive.replyRequested { try sendStatus() }
          }
        }
        try sendStatusIfDue()
      }
    } catch {
      if !halt.isSet { failure = error }
    }
    queue.close()
  }

  /// Returns false when the queue was closed (shutting down).
  private func handle(_ change: PgOutputMessage, at lsn: LSN, _ relations: inout RelationCache) throws -> Bool {
    switch change {
    case .relation(let relation):
      relations.apply(relation)
    case .type(let type):
      relations.apply(type)
    case .begin(let begin):
      ack.update { $0.began() }
      return try put(.begin(xid: begin.xid, commitLSN: begin.finalLSN, commitTime: begin.commitTime))
    case .commit(let commit):
      // Registered before the processor can see it, so its durable() finds it.
      ack.update { $0.committed(end: commit.endLSN) }
      return try put(.commit(endLSN: commit.endLSN, commitLSN: commit.commitLSN, commitTime: commit.commitTime))
    case .insert(let insert):
      let relation = try Self.relation(insert.relationID, relations)
      let row = Row(try relations.decode(insert.new, of: relation))
      if let table = Policy.Table(relation: relation.qualifiedName) {
        return try put(.configChange(.upsert(table, key: row.text(table.keyColumn) ?? "", row: Self.texts(row))))
      }
      return try put(.insert(relation: relation.qualifiedName, row: row, lsn: lsn))
    case .update(let update):
      let relation = try Self.relation(update.relationID, relations)
      guard let table = Policy.Table(relation: relation.qualifiedName) else {
        return try put(.ignored(relation: relation.qualifiedName, kind: "update"))
      }
      let row = Row(try relations.decode(update.new, of: relation))
      let key = row.text(table.keyColumn) ?? ""
      if let old = update.oldKey ?? update.old,
        let oldKey = Row(try relations.decode(old, of: relation)).text(table.keyColumn), oldKey != key
      {
        guard try put(.configChange(.delete(table, key: oldKey))) else { return false }
      }
      return try put(.configChange(.upsert(table, key: key, row: Self.texts(row))))
    case .delete(let delete):
      let relation = try Self.relation(delete.relationID, relations)
      guard let table = Policy.Table(relation: relation.qualifiedName) else {
        return try put(.ignored(relation: relation.qualifiedName, kind: "delete"))
      }
      guard let old = delete.oldKey ?? delete.old,
        let key = Row(try relations.decode(old, of: relation)).text(table.keyColumn)
      else { return true }
      return try put(.configChange(.delete(table, key: key)))
    case .truncate(let truncate):
      for id in truncate.relationIDs {
        let name = try Self.relation(id, relations).qualifiedName
        let item: StreamItem =
          Policy.Table(relation: name).map { .configChange(.truncate($0)) }
          ?? .ignored(relation: name, kind: "truncate")
        guard try put(item) else { return false }
      }
    case .origin, .message:
      // Origins and logical messages carry no rows; messages are not requested.
      break
    case .streamStart, .streamStop, .streamCommit, .streamAbort:
      // Sluice never asks for streaming of in-progress transactions; if they
      // came anyway, applying their rows could apply changes later aborted.
      throw StreamingNotRequested()
    }
    return true
  }

  /// Queues an item; while the handling stage is busy (a long batch, a
  /// backfill, retries), keeps sending status updates: the walsender times
  /// out a client it has not heard from in `wal_sender_timeout`.
  private func put(_ item: StreamItem) throws -> Bool {
    try queue.put(item) { try sendStatus() }
  }

  private static func relation(_ id: UInt32, _ relations: RelationCache) throws -> Relation {
    guard let relation = relations[id] else {
      throw RowDecodeError(relation: "relid:\(id)", reason: "change for a relation with no Relation message")
    }
    return relation
  }

  private static func texts(_ row: Row) -> [String: String?] {
    var result: [String: String?] = [:]
    for (name, value) in row.columns { result[name] = value.textValue }
    return result
  }

  private func sendStatusIfDue() throws {
    let elapsed = lastStatusSent.duration(to: .now)
    let confirmed = ack.confirmed
    if elapsed > .seconds(10) || (confirmed != lastFlushSent && elapsed > .milliseconds(100)) {
      try sendStatus()
    }
  }

  private func sendStatus() throws {
    let update = ack.update { $0.statusUpdate(clientTime: Clock.postgresNow()) }
    try stream.send(update)
    lastStatusSent = .now
    lastFlushSent = update.flushed
  }

  /// After the thread ended: report the final position and end the COPY.
  func finish() {
    let update = ack.update { $0.statusUpdate(clientTime: Clock.postgresNow()) }
    try? stream.send(update)
    stream.stop()
  }
}
