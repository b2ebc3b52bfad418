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
///   never all at once; what a full chain passes over is read again later,
///   by a walk from the start of the table.
/// - An actor's held entries are always its oldest pending ones: once its
///   chain has passed an entry over, none of its later entries is taken in
///   (not even from a read of new rows, with room in the chain) until a
///   page that begins below the one passed over brings them in, in order.
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
  /// An actor that passed entries over has room in its chain again: a
  /// rescan from the start is wanted. Cleared by `startRescan`.
  public private(set) var refillWanted = false
  /// Chains by actor, compared byte-wise as Postgres compares text.
  private var chains: [Bytewise?: Chain] = [:]
  /// Actors with pending entries that are not held, each with the lowest
  /// id those may start at: every pending entry of the actor below it is
  /// held, none at or above it may be taken in but from a page that begins
  /// below it. Kept when the actor's chain drains; gone once a page has
  /// brought every entry of the actor up to `cursor`.
  private var gaps: [Bytewise?: Int64] = [:]
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
  /// the last id it got to (`cursor` moves up to it).
  ///
  /// The page holds every pending entry with an id in (`after`, `through`]
  /// (`after` defaults to `cursor`: a read of new rows; `through` to the
  /// page's last id: a full page). An entry already held takes the table's
  /// attempts and due time unless it is in flight (an operator's `outbox
  /// retry`). One whose chain is full is passed over, and so is every later
  /// one of its actor until a page that begins below it (a walk from the
  /// start) brings them in order; `refillWanted` says when such a walk
  /// would find room. A late entry below ones held (committed out of id
  /// order) takes the place of its chain's newest idle entry if it must.
  @discardableResult
  public mutating func add(_ entries: [OutboxEntry], after: Int64? = nil, through: Int64? = nil, now: Int64)
    -> Int64?
  {
    let after = after ?? cursor
    var reached: Int64?
    var stopped = false
    /// Actors that passed an entry over in this page: the rest of their page waits too.
    var passedOver: Set<Bytewise?> = []
    for entry in entries {
      if let key = chainOf[entry.id] {
        refresh(entry, in: key, now: now)
        reached = entry.id
        continue
      }
      guard room > 0 else {
        stopped = true
        break
      }
      let key = entry.actor.map(Bytewise.init)
      let held = chains[key]?.count ?? 0
      if let gap = gaps[key], entry.id >= gap, after >= gap || passedOver.contains(key) {
        // An older entry of this actor is not held: this one waits for the walk that brings it.
        if held < chainCapacity { refillWanted = true }
      } else if held >= chainCapacity, !evictNewest(of: key, above: entry.id) {
        gaps[key] = entry.id
        passedOver.insert(key)
      } else {
        chainOf[entry.id] = key
        let oldHead = chains[key]?.head?.id
        chains[key, default: Chain()].insert(entry)
        if chains[key]?.busy == false, chains[key]?.head?.id != oldHead { schedule(entry, now: now) }
      }
      reached = entry.id
    }
    if let reached { cursor = max(cursor, reached) }
    // Every pending entry in (after, covered] was offered: an actor's gap in
    // that range that passed nothing over moves past it, or closes.
    let covered = stopped ? (reached ?? after) : max(through ?? reached ?? after, reached ?? after)
    for (key, gap) in gaps where after < gap && gap <= covered && !passedOver.contains(key) {
      gaps[key] = covered >= cursor ? nil : covered + 1
    }
    return reached
  }

  /// Makes room in a full chain for a late entry below its newest one, which
  /// is let go (unless in flight) to be read again in order.
  private mutating func evictNewest(of key: Bytewise?, above id: Int64) -> Bool {
    guard let chain = chains[key], let newest = chain.entries.last, newest.id > id, chain.busyID != newest.id
    else { return false }
    chains[key]?.remove(at: chain.entries.count - 1)
    chainOf[newest.id] = nil
    gaps[key] = min(gaps[key] ?? newest.id, newest.id)
    return true
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
      if gaps[key] != nil { refillWanted = true }
    }
    guard let head = chains[key]?.head else {
      chains[key] = nil
      return
    }
    schedule(head, now: now)
  }

  /// A walk from the start of the table begins: it brings in what chains with room passed over.
  public mutating func startRescan() {
    refillWanted = false
  }

  /// When the earliest waiting head falls due (nil: none waits).
  public var nextDue: Int64? { waiting.min?.at }

  private mutating func schedule(_ head: OutboxEntry, now: Int64) {
    if head.dueAt <= now { ready.insert(head.id) } else { waiting.insert(Due(at: head.dueAt, id: head.id)) }
  }
}
