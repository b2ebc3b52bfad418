import Foundation
public import SluiceCore

/// What the reading stage hands the handling stage, in stream order.
public enum StreamItem: Sendable {
  case begin(xid: UInt32, commitLSN: LSN, commitTime: PostgresTimestamp)
  /// An inserted row of a table that is not a configuration table.
  case insert(relation: String, row: Row, lsn: LSN)
  /// A change of `sluice.sources`, `permission_rules`, `actor_roles` or `handlers`.
  case configChange(Policy.Change)
  /// An update, delete or truncate of a source: counted and otherwise ignored.
  case ignored(relation: String, kind: String)
  case commit(endLSN: LSN, commitLSN: LSN, commitTime: PostgresTimestamp)
}

/// A bounded FIFO between two threads: the producer blocks while it is full,
/// so memory is bounded whatever the size of a source transaction.
final class BlockingQueue<Element: Sendable>: @unchecked Sendable {
  private var items: [Element] = []
  private var head = 0
  private let capacity: Int
  private let condition = NSCondition()
  private(set) var closed = false

  init(capacity: Int) { self.capacity = capacity }

  var count: Int {
    condition.lock()
    defer { condition.unlock() }
    return items.count - head
  }

  /// Adds an item, waiting while full. Returns false if the queue was closed.
  func put(_ item: Element) -> Bool {
    condition.lock()
    defer { condition.unlock() }
    while items.count - head >= capacity && !closed { condition.wait() }
    guard !closed else { return false }
    items.append(item)
    condition.broadcast()
    return true
  }

  /// Takes up to `limit` items, waiting up to `timeout` seconds for the first.
  func take(upTo limit: Int, timeout: Double) -> [Element] {
    condition.lock()
    defer { condition.unlock() }
    let deadline = Date().addingTimeInterval(timeout)
    while items.count == head && !closed {
      if !condition.wait(until: deadline) { break }
    }
    let end = min(items.count, head + limit)
    let taken = Array(items[head..<end])
    head = end
    if head > 4096 || head == items.count {
      items.removeFirst(head)
      head = 0
    }
    condition.broadcast()
    return taken
  }

  /// Wakes every waiter; later puts fail, takes return what is left.
  func close() {
    condition.lock()
    closed = true
    condition.broadcast()
    condition.unlock()
  }
}
