/// A binary min-heap: the smallest element first.
public struct MinHeap<Element: Comparable>: Sendable where Element: Sendable {
  private var items: [Element] = []

  public init() {}

  public var isEmpty: Bool { items.isEmpty }
  public var count: Int { items.count }
  public var min: Element? { items.first }

  public mutating func insert(_ element: Element) {
    items.append(element)
    var child = items.count - 1
    while child > 0 {
      let parent = (child - 1) / 2
      guard items[child] < items[parent] else { break }
      items.swapAt(child, parent)
      child = parent
    }
  }

  public mutating func popMin() -> Element? {
    guard !items.isEmpty else { return nil }
    items.swapAt(0, items.count - 1)
    let smallest = items.removeLast()
    var parent = 0
    while true {
      let left = 2 * parent + 1
      let right = left + 1
      var smaller = parent
      if left < items.count, items[left] < items[smaller] { smaller = left }
      if right < items.count, items[right] < items[smaller] { smaller = right }
      if smaller == parent { break }
      items.swapAt(parent, smaller)
      parent = smaller
    }
    return smallest
  }

  public mutating func removeAll() { items.removeAll() }
}
