/// In which transactions a batch's units are applied, and how a failure is
/// narrowed down to the one event that caused it (SPEC section 8, poison events).
///
/// - `fast(range)`: one pipelined transaction, no savepoints. Any failure
///   sends the same range to `careful`.
/// - `careful(range)`: one transaction, a savepoint per event, each handler
///   tried once. When a handler fails, the events before it commit
///   (`stoppedAt`), the failing one goes `alone`, the rest go `fast` again.
///   A failure that names no event (a ledger write, say) splits the range in
///   halves, down to single events.
/// - `alone(index)`: the event by itself, its attempts counted in the
///   database across reconnects and restarts, retried with backoff outside
///   any transaction, then `dead`. It always ends with a ledger row.
///
/// After the daemon or its session died mid-batch, the first `isolated`
/// units go `alone` straight away: nothing in memory says which event killed it.
/// A lost connection is not reported here: the shell reconnects, and the
/// batch comes back with `isolated` set.
public struct ApplySchedule: Sendable, Equatable {
  public enum Attempt: Sendable, Equatable {
    case fast(Range<Int>)
    case careful(Range<Int>)
    case alone(Int)
  }

  public enum Result: Sendable, Equatable {
    case committed
    /// Careful only: the units before this index committed; this one's handler failed.
    case stoppedAt(Int)
    /// Nothing committed, and the failure names no unit.
    case failed
  }

  /// Attempts still to make, the next one last.
  private var stack: [Attempt]
  private let pipelining: Bool

  /// `isolated`: how many units, from the first, go alone.
  public init(count: Int, isolated: Int = 0, pipelining: Bool = true) {
    self.pipelining = pipelining
    let alone = min(max(isolated, 0), count)
    var attempts: [Attempt] = (0..<alone).map { .alone($0) }
    if alone < count { attempts.append(pipelining ? .fast(alone..<count) : .careful(alone..<count)) }
    stack = attempts.reversed()
  }

  /// The attempt to make now; nil when the batch is done.
  public var next: Attempt? { stack.last }

  public mutating func report(_ result: Result) {
    guard let attempt = stack.popLast() else { return }
    switch (attempt, result) {
    case (_, .committed), (.alone, _):
      return
    case (.fast(let range), _):
      stack.append(.careful(range))
    case (.careful(let range), .stoppedAt(let index)) where range.contains(index):
      if index + 1 < range.upperBound {
        stack.append(pipelining ? .fast(index + 1..<range.upperBound) : .careful(index + 1..<range.upperBound))
      }
      stack.append(.alone(index))
    case (.careful(let range), _):
      if range.count <= 1 {
        stack.append(.alone(range.lowerBound))
      } else {
        let middle = range.lowerBound + range.count / 2
        stack.append(.careful(middle..<range.upperBound))
        stack.append(.careful(range.lowerBound..<middle))
      }
    }
  }
}

/// How the fast path groups units: consecutive allowed events of one
/// batch-capable Swift handler go to it together (one set-based statement);
/// units whose outcome is already known do not break such a run.
public enum ApplyRuns {
  public enum Step: Sendable, Equatable {
    /// Units whose ledger rows are known.
    case record(Int)
    case handle(Int)
    /// Indices of a run for one batch-capable handler.
    case run([Int])
  }

  public static func steps(_ units: ArraySlice<ApplyUnit>) -> [Step] {
    var steps: [Step] = []
    var run: (type: Bytewise, indices: [Int])?
    func flush() {
      if let pending = run { steps.append(.run(pending.indices)) }
      run = nil
    }
    for index in units.indices {
      let unit = units[index]
      switch unit.work {
      case .record:
        steps.append(.record(index))
      case .handle(.swift(batchCapable: true)):
        let type = Bytewise(unit.event.type)
        if run?.type == type {
          run?.indices.append(index)
        } else {
          flush()
          run = (type, [index])
        }
      case .handle:
        flush()
        steps.append(.handle(index))
      }
    }
    flush()
    return steps
  }
}
