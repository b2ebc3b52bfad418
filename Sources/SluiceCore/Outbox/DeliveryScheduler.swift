/// A pending delivery as the scheduler sees it: no URL, no body.
public struct OutboxEntry: Sendable, Equatable {
  /// `sluice.outbox.id`: assigned in the order the events' batches committed.
  public var id: Int64
  public var actor: String?
  /// Attempts made so far.
  public var attempts: Int
  /// When it may be tried (milliseconds since 1970); 0 = now.
  public var dueAt: Int64

  public init(id: Int64, actor: String?, attempts: Int = 0, dueAt: Int64 = 0) {
    self.id = id
    self.actor = actor
    self.attempts = attempts
    self.dueAt = dueAt
  }
}

/// Which pending deliveries of one endpoint go next (SPEC section 9).
///
/// - One actor's deliveries form a chain, in id (commit) order; only the
///   head of a chain is ever in flight, and the next one waits until it is
///   delivered or dead. A head waiting for a retry holds its chain back.
/// - Different actors go in parallel: `take` hands out due heads, lowest id
///   first, up to the endpoint's `max_in_flight`.
/// - At most `capacity` entries are held, and `chainCapacity` per actor:
///   pending deliveries are read in pages (`cursor`: the highest id read),
///   never all at once; what a full chain passes over is read again later.
public struct DeliveryScheduler: Sendable {
  struct Chain: Sendable {
    var entries: [OutboxEntry] = []
    var start = 0
    /// The entry in flight (at most one per chain).
    var busyID: Int64?
    var busy: Bool { busyID != nil }
    var head: OutboxEntry? { start < entries.count ? entries[start] : nil }
    var isEmpty: Bool { start >= entries.count }
    var count: Int { entries.count - start }
    /// Entries of this actor were passed over since the last rescan began.
    var truncated = false

    mutating func insert(_ entry: OutboxEntry) {
      var index = entries.count
      while index > start, entries[index - 1].id > entry.id { index -= 1 }
      entries.insert(entry, at: index)
    }

    func index(of id: Int64) -> Int? { entries[start...].firstIndex(where: { $0.id == id }) }

    mutating func remove(at index: Int) {
      if index == start {
        start += 1
        if start > 64, start * 2 > entries.count {
          entries.removeFirst(start)
          start = 0
        }
      } else {
        entries.remove(at: index)
      }
    }
  }

  struct Due: Comparable, Sendable {
    var at: Int64
    var id: Int64
    static func < (lhs: Due, rhs: Due) -> Bool { (lhs.at, lhs.id) < (rhs.at, rhs.id) }
  }

  public let capacity: Int
  /// The most entries one actor's chain holds: a client with a long
  /// backlog to a failing endpoint cannot fill the window and stall others.
  public let chainCapacity: Int
  /// The highest id read so far: the next page starts after it.
  public var cursor: Int64 = 0
  /// A chain that passed entries over (it was full) has room again: a
  /// rescan from the start is wanted. Cleared by `startRescan`.
  public private(set) var refillWanted = false
  /// Chains by actor, compared byte-wise as Postgres compares text.
  private var chains: [Bytewise?: Chain] = [:]
  /// id → its chain, for every entry held.
  private var chainOf: [Int64: Bytewise?] = [:]
  /// Heads that are due and idle, by id (stale ones are skipped when popped).
  private var ready = MinHeap<Int64>()
  /// Heads waiting for their time, by due time.
  private var waiting = MinHeap<Due>()
  public private(set) var inFlight = 0

  public init(capacity: Int = 10_000, chainCapacity: Int = 64) {
    self.capacity = capacity
    self.chainCapacity = chainCapacity
  }

  /// Entries held (in flight included).
  public var held: Int { chainOf.count }
  /// How many more entries a page may bring.
  public var room: Int { max(0, capacity - held) }
  public func holds(_ id: Int64) -> Bool { chainOf[id] != nil }

  /// Adds a page read in id order while the window has room, and returns
  /// the last id it got to (`cursor` moves up to it). An entry already held
  /// takes the table's attempts and due time unless it is in flight (an
  /// operator's `outbox retry`); one whose chain is full is passed over
  /// (its chain is marked, and `refillWanted` once it drains).
  @discardableResult
  public mutating func add(_ entries: [OutboxEntry], now: Int64) -> Int64? {
    var reached: Int64?
    for entry in entries {
      if let key = chainOf[entry.id] {
        refresh(entry, in: key, now: now)
      } else {
        guard room > 0 else { break }
        let key = entry.actor.map(Bytewise.init)
        if chains[key, default: Chain()].count >= chainCapacity {
          chains[key]?.truncated = true
        } else {
          chainOf[entry.id] = key
          let oldHead = chains[key]?.head?.id
          chains[key, default: Chain()].insert(entry)
          if chains[key]?.busy == false, chains[key]?.head?.id != oldHead { schedule(entry, now: now) }
        }
      }
      reached = entry.id
    }
    if let reached { cursor = max(cursor, reached) }
    return reached
  }

  private mutating func refresh(_ entry: OutboxEntry, in key: Bytewise?, now: Int64) {
    guard let chain = chains[key], chain.busyID != entry.id, let index = chain.index(of: entry.id) else { return }
    let held = chain.entries[index]
    guard held.attempts != entry.attempts || held.dueAt != entry.dueAt else { return }
    chains[key]?.entries[index].attempts = entry.attempts
    chains[key]?.entries[index].dueAt = entry.dueAt
    if index == chain.start, !chain.busy { schedule(entry, now: now) }
  }

  /// Due heads, lowest id first, at most `limit`; each is then in flight until `finished`.
  public mutating func take(limit: Int, now: Int64) -> [OutboxEntry] {
    while let next = waiting.min, next.at <= now {
      _ = waiting.popMin()
      ready.insert(next.id)
    }
    var taken: [OutboxEntry] = []
    while taken.count < limit, let id = ready.popMin() {
      guard let key = chainOf[id], let chain = chains[key], !chain.busy, let head = chain.head, head.id == id
      else { continue }  // stale: no longer an idle head
      guard head.dueAt <= now else {
        waiting.insert(Due(at: head.dueAt, id: id))
        continue
      }
      chains[key]?.busyID = id
      inFlight += 1
      taken.append(head)
    }
    return taken
  }

  /// An entry taken is done: delivered, dead or gone (`retryAt` nil), or to
  /// be tried again at `retryAt`. Its chain's next entry becomes the head.
  public mutating func finished(_ id: Int64, attempts: Int, retryAt: Int64?, now: Int64) {
    guard let key = chainOf[id], let chain = chains[key], chain.busyID == id, let index = chain.index(of: id)
    else { return }
    chains[key]?.busyID = nil
    inFlight -= 1
    if let retryAt {
      chains[key]?.entries[index].attempts = attempts
      chains[key]?.entries[index].dueAt = retryAt
    } else {
      chains[key]?.remove(at: index)
      chainOf[id] = nil
      if chain.truncated { refillWanted = true }
    }
    guard let head = chains[key]?.head else {
      chains[key] = nil
      return
    }
    schedule(head, now: now)
  }

  /// A walk from the start of the table begins: chains that pass entries over from now on are marked anew.
  public mutating func startRescan() {
    refillWanted = false
    for key in chains.keys { chains[key]?.truncated = false }
  }

  /// When the earliest waiting head falls due (nil: none waits).
  public var nextDue: Int64? { waiting.min?.at }

  private mutating func schedule(_ head: OutboxEntry, now: Int64) {
    if head.dueAt <= now { ready.insert(head.id) } else { waiting.insert(Due(at: head.dueAt, id: head.id)) }
  }
}
