import Foundation

/// A bounded FIFO between two threads: the producer blocks while it is
/// full, by count or by bytes, so memory is bounded whatever the size of a
/// source transaction or of one row. An item larger than the byte capacity
/// still passes, alone.
final class BlockingQueue<Element: Sendable>: @unchecked Sendable {
  private var items: [Element] = []
  /// The cost of each item, computed once, when it is put.
  private var costs: [Int] = []
  private var head = 0
  private let capacity: Int
  private let byteCapacity: Int
  private let cost: (Element) -> Int
  private var bytes = 0
  private let condition = NSCondition()
  private(set) var closed = false
  private var putWait = Duration.zero
  private var takeWait = Duration.zero

  init(capacity: Int, byteCapacity: Int = .max, cost: @escaping (Element) -> Int = { _ in 0 }) {
    self.capacity = capacity
    self.byteCapacity = byteCapacity
    self.cost = cost
  }

  /// Time producers spent waiting for room, and consumers for items: which side is the slower.
  var waits: (put: Duration, take: Duration) {
    condition.lock()
    defer { condition.unlock() }
    return (putWait, takeWait)
  }

  var count: Int {
    condition.lock()
    defer { condition.unlock() }
    return items.count - head
  }

  /// Adds an item, waiting while full; every second of waiting calls
  /// `waiting` (outside the lock). Returns false if the queue was closed.
  func put(_ item: Element, waiting: () throws -> Void = {}) rethrows -> Bool {
    condition.lock()
    defer { condition.unlock() }
    let size = cost(item)
    var started: ContinuousClock.Instant?
    defer { if let started { putWait += started.duration(to: .now) } }
    while (items.count - head >= capacity || (bytes > 0 && bytes + size > byteCapacity)) && !closed {
      if started == nil { started = .now }
      if !condition.wait(until: Date().addingTimeInterval(1)) {
        condition.unlock()
        defer { condition.lock() }
        try waiting()
      }
    }
    guard !closed else { return false }
    items.append(item)
    costs.append(size)
    bytes += size
    condition.broadcast()
    return true
  }

  /// Takes up to `limit` items and about `bytes` bytes (at least one item
  /// if any), waiting up to `timeout` seconds for the first. Returns them and their cost.
  func take(upTo limit: Int, bytes budget: Int = .max, timeout: Double) -> (items: [Element], bytes: Int) {
    condition.lock()
    defer { condition.unlock() }
    let deadline = Date().addingTimeInterval(timeout)
    let started = ContinuousClock.now
    defer { takeWait += started.duration(to: .now) }
    while items.count == head && !closed {
      if !condition.wait(until: deadline) { break }
    }
    var end = head
    var taken = 0
    while end < items.count, end - head < limit {
      let size = costs[end]
      if end > head && taken + size > budget { break }
      taken += size
      end += 1
    }
    let result = Array(items[head..<end])
    bytes -= taken
    head = end
    if head > 4096 || head == items.count {
      items.removeFirst(head)
      costs.removeFirst(head)
      head = 0
    }
    condition.broadcast()
    return (result, taken)
  }

  /// Wakes every waiter; later puts fail, takes return what is left.
  func close() {
    condition.lock()
    closed = true
    condition.broadcast()
    condition.unlock()
  }
}
