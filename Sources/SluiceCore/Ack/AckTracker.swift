/// Decides which WAL position may be confirmed to the server as flushed.
///
/// Rules (a confirmed position is never re-sent by Postgres, so confirming
/// too early loses data):
/// - a transaction's end LSN is confirmed only once the caller says its work
///   is durable, and only after every transaction before it is durable too;
/// - a keepalive's WAL end is confirmed only when nothing is in flight (no
///   transaction open or waiting), so an idle source does not pin WAL;
/// - the confirmed position never goes backwards.
public struct AckTracker: Sendable {
  public private(set) var confirmed: LSN
  /// Highest WAL position received (reported as the "write" position).
  public private(set) var received: LSN
  /// End LSNs of committed source transactions, in commit order, with whether each is durable.
  private var pending: [(end: LSN, durable: Bool)] = []
  private var head = 0
  public private(set) var transactionOpen = false

  public init(confirmed: LSN) {
    self.confirmed = confirmed
    self.received = confirmed
  }

  public var inFlight: Bool { transactionOpen || head < pending.count }

  public mutating func received(_ lsn: LSN) { received = max(received, lsn) }

  /// A Begin arrived: until its Commit, keepalives must not be confirmed.
  public mutating func began() { transactionOpen = true }

  /// A Commit arrived. `durable`: true when the transaction needs no work
  /// (nothing in it to handle), so it is done as soon as those before it are.
  public mutating func committed(end: LSN, durable: Bool = false) {
    transactionOpen = false
    received(end)
    pending.append((end, durable))
    advance()
  }

  /// Everything up to and including `end` is durable.
  public mutating func durable(through end: LSN) {
    for index in head..<pending.count where pending[index].end <= end { pending[index].durable = true }
    advance()
  }

  /// A keepalive: confirm its WAL end if nothing is in flight.
  public mutating func keepalive(walEnd: LSN) {
    received(walEnd)
    if !inFlight { confirmed = max(confirmed, walEnd) }
  }

  /// After a reconnect the server resends from `confirmed`: forget what was in flight.
  public mutating func reset() {
    pending.removeAll()
    head = 0
    transactionOpen = false
    received = confirmed
  }

  private mutating func advance() {
    while head < pending.count, pending[head].durable {
      confirmed = max(confirmed, pending[head].end)
      head += 1
    }
    if head > 1024 || head == pending.count {
      pending.removeFirst(head)
      head = 0
    }
  }

  /// The status update to send now. `clientTime`: microseconds since 2000-01-01.
  public func statusUpdate(clientTime: Int64, replyRequested: Bool = false) -> StandbyStatusUpdate {
    StandbyStatusUpdate(
      written: max(received, confirmed), flushed: confirmed, applied: confirmed, clientTime: clientTime,
      replyRequested: replyRequested)
  }
}
