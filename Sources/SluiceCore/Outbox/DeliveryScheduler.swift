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
/// - At most `capacity` entries are held: pending deliveries are read in
///   pages (`cursor`: the highest id read), never all at once.
public struct DeliveryScheduler: Sendable {
  struct Chain: Sendable {
    var entries: [OutboxEntry] = []
    var start = 0
    /// The entry in flight (at most one per chain).
    var busyID: Int64?
    var busy: Bool { busyID != nil }
    var head: OutboxEntry? { start < entries.count ? entries[start] : nil }
    var isEmpty: Bool { start >= entries.count }

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
  /// The highest id read so far: the next page starts after it.
  public var cursor: Int64 = 0
  private var chains: [String?: Chain] = [:]
  /// id → its chain's actor, for every entry held.
  private var actorOf: [Int64: String?] = [:]
  /// Heads that are due and idle, by id (stale ones are skipped when popped).
  private var ready = MinHeap<Int64>()
  /// Heads waiting for their time, by due time.
  private var waiting = MinHeap<Due>()
  public private(set) var inFlight = 0

  public init(capacity: Int = 10_000) { self.capacity = capacity }

  /// Entries held (in flight included).
  public var held: Int { actorOf.count }
  /// How many more entries a page may bring.
  public var room: Int { max(0, capacity - held) }
  public func holds(_ id: Int64) -> Bool { actorOf[id] != nil }

  /// Adds a page read after `cursor`, in id order, while there is room;
  /// the cursor moves past what was added and what was already held.
  public mutating func add(_ entries: [OutboxEntry], now: Int64) {
    for entry in entries {
      if actorOf[entry.id] != nil {
        cursor = max(cursor, entry.id)
        continue
      }
      guard room > 0 else { return }
      actorOf[entry.id] = entry.actor
      cursor = max(cursor, entry.id)
      var chain = chains[entry.actor] ?? Chain()
      let oldHead = chain.head
      chain.insert(entry)
      chains[entry.actor] = chain
      if !chain.busy, chain.head?.id != oldHead?.id { schedule(entry, now: now) }
    }
  }

  /// Due heads, lowest id first, at most `limit`; each is then in flight until `finished`.
  public mutating func take(limit: Int, now: Int64) -> [OutboxEntry] {
    while let next = waiting.min, next.at <= now {
      _ = waiting.popMin()
      ready.insert(next.id)
    }
    var taken: [OutboxEntry] = []
    while taken.count < limit, let id = ready.popMin() {
      guard let actor = actorOf[id], var chain = chains[actor], !chain.busy, let head = chain.head, head.id == id
      else { continue }  // stale: no longer an idle head
      guard head.dueAt <= now else {
        waiting.insert(Due(at: head.dueAt, id: id))
        continue
      }
      chain.busyID = id
      chains[actor] = chain
      inFlight += 1
      taken.append(head)
    }
    return taken
  }

  /// An entry taken is done: delivered, dead or gone (`retryAt` nil), or to
  /// be tried again at `retryAt`. Its chain's next entry becomes the head.
  public mutating func finished(_ id: Int64, attempts: Int, retryAt: Int64?, now: Int64) {
    guard let actor = actorOf[id], var chain = chains[actor], chain.busyID == id, let index = chain.index(of: id)
    else { return }
    chain.busyID = nil
    inFlight -= 1
    if let retryAt {
      chain.entries[index].attempts = attempts
      chain.entries[index].dueAt = retryAt
    } else {
      chain.remove(at: index)
      actorOf[id] = nil
    }
    if chain.isEmpty {
      chains[actor] = nil
      return
    }
    chains[actor] = chain
    if let head = chain.head { schedule(head, now: now) }
  }

  /// When the earliest waiting head falls due (nil: none waits).
  public var nextDue: Int64? { waiting.min?.at }

  private mutating func schedule(_ head: OutboxEntry, now: Int64) {
    if head.dueAt <= now { ready.insert(head.id) } else { waiting.insert(Due(at: head.dueAt, id: head.id)) }
  }
}
