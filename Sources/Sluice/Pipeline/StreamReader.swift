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
/// decodes pgoutput, turns it into `StreamItem`s (`TransactionAssembler`)
/// and answers the server. It keeps
/// reading while the processor commits, up to the queue's capacity.
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
    var assembler = TransactionAssembler()
    do {
      while !halt.isSet {
        if let message = try stream.read(timeoutMilliseconds: 100) {
          switch message {
          case .xLogData(let data):
            let change = try decoder.decode(data)
            guard try assembler.assemble(change, at: data.walStart, emit: forward) else { return }
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

  /// Hands an item to the handling stage; begins and commits are registered
  /// with the ack tracker first, so the processor's `durable` finds them.
  private func forward(_ item: StreamItem) throws -> Bool {
    switch item {
    case .begin: ack.update { $0.began() }
    case .commit(let end, _, _): ack.update { $0.committed(end: end) }
    default: break
    }
    return try put(item)
  }

  /// Queues an item; while the handling stage is busy (a long batch, a
  /// backfill, retries), keeps sending status updates: the walsender times
  /// out a client it has not heard from in `wal_sender_timeout`.
  private func put(_ item: StreamItem) throws -> Bool {
    try queue.put(item) { try sendStatus() }
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
