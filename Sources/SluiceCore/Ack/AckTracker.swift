/// Decides which WAL position may be confirmed to the server as flushed.
///
/// Rules (a confirmed position is never re-sent by Postgres, so confirming
/// too early loses data):
/// - a transaction's end LSN is confirmed only once the caller says its work
///   is durable, and only after every transaction before it is durable too;
/// - a keepalive's WAL end is confirmed once every transaction received
///   before it is durable (never while one is open: its rows are being
///   sent), so an idle source does not pin WAL;
/// - with asynchronous commit, work is durable only once the server's WAL
///   flush position has passed the local commit record that holds it
///   (`committedLocally`, `localFlushed`: the pairs Postgres's own apply
///   worker keeps in `store_flush_position`);
/// - the confirmed position never goes backwards.
public struct AckTracker: Sendable {
  public private(set) var confirmed: LSN
  /// Highest WAL position received (reported as the "write" position).
  public private(set) var received: LSN
  /// End LSNs of committed source transactions, in commit order, with whether each is durable.
  private var pending: [(end: LSN, durable: Bool)] = []
  private var head = 0
  public private(set) var transactionOpen = false
  /// Source end LSNs applied by asynchronous commits, with the local WAL
  /// position their commit record ends before, in commit order.
  private var unflushed: [(end: LSN, local: LSN)] = []

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

  /// A keepalive: its WAL end is confirmed once the transactions before it
  /// are durable. While a transaction is open it says nothing: the server
  /// may send one between the rows of the transaction it is sending.
  public mutating func keepalive(walEnd: LSN) {
    received(walEnd)
    guard !transactionOpen else { return }
    pending.append((walEnd, true))
    advance()
  }

  /// Everything up to and including `end` was committed locally without
  /// waiting for the WAL flush; it is durable once the local flush position
  /// reaches `commitRecord` (any position at or after the commit record's end).
  public mutating func committedLocally(through end: LSN, commitRecord: LSN) {
    unflushed.append((end, commitRecord))
  }

  /// The server's WAL is flushed up to `flush`.
  public mutating func localFlushed(_ flush: LSN) {
    var through: LSN?
    var count = 0
    for pair in unflushed {
      guard pair.local <= flush else { break }
      through = pair.end
      count += 1
    }
    guard let through else { return }
    unflushed.removeFirst(count)
    durable(through: through)
  }

  /// Work was committed locally that the WAL flush has not passed yet.
  public var awaitingFlush: Bool { !unflushed.isEmpty }

  /// After a reconnect the server resends from `confirmed`: forget what was in flight.
  public mutating func reset() {
    pending.removeAll()
    unflushed.removeAll()
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
