import Foundation
import Logging
import SluiceCore
import SluicePostgres
import Synchronization

/// The position the handling stage has made durable, published for the
/// reader's status updates. The handling stage alone owns the `AckTracker`;
/// the reader only reads this.
final class ConfirmedPosition: Sendable {
  private let value: Atomic<UInt64>

  init(_ lsn: LSN) { value = Atomic(lsn.value) }

  var lsn: LSN { LSN(value.load(ordering: .acquiring)) }
  func publish(_ lsn: LSN) { value.store(lsn.value, ordering: .releasing) }
}

/// The reading stage: one thread that owns the replication connection,
/// decodes pgoutput, turns it into `StreamItem`s (`TransactionAssembler`),
/// keepalives included, and answers the server. It keeps reading while the
/// handling stage commits, up to the queue's capacity.
final class StreamReader: @unchecked Sendable {
  let stream: ReplicationConnection
  let queue: BlockingQueue<StreamItem>
  let confirmed: ConfirmedPosition
  let logger: Logger
  /// Set to end the read loop (shutdown or the processor failed).
  let halt = StopSignal()
  private let finished = DispatchSemaphore(value: 0)
  private(set) var failure: (any Error)?
  private var lastStatusSent = ContinuousClock.now
  private var lastFlushSent: LSN
  /// Highest WAL position received (reported as the "write" position).
  private var received: LSN

  init(stream: ReplicationConnection, queue: BlockingQueue<StreamItem>, confirmed: ConfirmedPosition, logger: Logger) {
    self.stream = stream
    self.queue = queue
    self.confirmed = confirmed
    self.logger = logger
    self.lastFlushSent = confirmed.lsn
    self.received = confirmed.lsn
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
            received = max(received, data.walStart)
            let change = try decoder.decode(data)
            guard try assembler.assemble(change, at: data.walStart, emit: put) else { return }
          case .keepalive(let keepalive):
            received = max(received, keepalive.walEnd)
            if keepalive.replyRequested { try sendStatus() }
            guard try put(.keepalive(walEnd: keepalive.walEnd)) else { return }
          }
        }
        try sendStatusIfDue()
      }
    } catch {
      if !halt.isSet { failure = error }
    }
    queue.close()
  }

  /// Queues an item; while the handling stage is busy (a long batch, a
  /// backfill, retries), keeps sending status updates: the walsender times
  /// out a client it has not heard from in `wal_sender_timeout`.
  private func put(_ item: StreamItem) throws -> Bool {
    if case .commit(let end, _, _) = item { received = max(received, end) }
    return try queue.put(item) { try sendStatus() }
  }

  private func sendStatusIfDue() throws {
    let elapsed = lastStatusSent.duration(to: .now)
    if elapsed > .seconds(10) || (confirmed.lsn != lastFlushSent && elapsed > .milliseconds(100)) {
      try sendStatus()
    }
  }

  private func sendStatus() throws {
    let flushed = confirmed.lsn
    try stream.send(
      StandbyStatusUpdate(
        written: max(received, flushed), flushed: flushed, applied: flushed, clientTime: Clock.postgresNow(),
        replyRequested: false))
    lastStatusSent = .now
    lastFlushSent = flushed
  }

  /// After the thread ended: report the final position and end the COPY.
  func finish() {
    try? sendStatus()
    stream.stop()
  }
}
