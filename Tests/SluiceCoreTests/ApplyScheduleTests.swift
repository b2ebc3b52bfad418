import Testing

@testable import SluiceCore

/// The isolation split, one line per transition: (units, isolated, results
/// reported in turn) → the attempts made, in order.
@Suite struct ApplyScheduleTests {
  typealias A = ApplySchedule.Attempt
  typealias R = ApplySchedule.Result

  static let cases: [(String, Int, Int, [R], [A])] = [
    ("clean batch: one fast transaction", 4, 0, [.committed], [.fast(0..<4)]),
    ("fast fails, careful commits", 4, 0, [.failed, .committed], [.fast(0..<4), .careful(0..<4)]),
    (
      "handler 2 fails: 0-1 committed, 2 alone, rest fast", 5, 0, [.failed, .stoppedAt(2), .committed, .committed],
      [.fast(0..<5), .careful(0..<5), .alone(2), .fast(3..<5)]
    ),
    (
      "the last event fails: nothing after it", 3, 0, [.failed, .stoppedAt(2), .committed],
      [.fast(0..<3), .careful(0..<3), .alone(2)]
    ),
    (
      "unattributable failure: halves, down to one event, then alone", 4, 0,
      [.failed, .failed, .failed, .failed, .committed, .committed, .committed],
      [.fast(0..<4), .careful(0..<4), .careful(0..<2), .careful(0..<1), .alone(0), .careful(1..<2), .careful(2..<4)]
    ),
    (
      "a single unit that fails carefully goes alone", 1, 0, [.failed, .failed, .committed],
      [.fast(0..<1), .careful(0..<1), .alone(0)]
    ),
    (
      "after a crash: the first units alone", 3, 2, [.committed, .committed, .committed],
      [.alone(0), .alone(1), .fast(2..<3)]
    ),
    ("isolation longer than the batch", 2, 10, [.committed, .committed], [.alone(0), .alone(1)]),
    ("empty batch: nothing to do", 0, 0, [], []),
  ]

  @Test(arguments: cases)
  func transitions(_ name: String, _ count: Int, _ isolated: Int, _ results: [R], _ expected: [A]) {
    var schedule = ApplySchedule(count: count, isolated: isolated)
    var attempts: [A] = []
    var results = results[...]
    while let attempt = schedule.next {
      attempts.append(attempt)
      guard let result = results.popFirst() else { break }
      schedule.report(result)
    }
    #expect(attempts == expected, "\(name)")
    #expect(schedule.next == nil, "\(name): done")
  }

  @Test func withoutPipeliningEveryRangeIsCareful() {
    var schedule = ApplySchedule(count: 3, pipelining: false)
    #expect(schedule.next == .careful(0..<3))
    schedule.report(.stoppedAt(0))
    #expect(schedule.next == .alone(0))
    schedule.report(.committed)
    #expect(schedule.next == .careful(1..<3))
  }

  @Test func everyUnitIsCoveredExactlyOnceWhateverFails() {
    // Seeded: every failure pattern on 1...12 units ends with each unit committed once.
    let seed: UInt64 = 2024
    print("seed: \(seed)")
    var random = SplitMix64(seed: seed)
    for count in 1...12 {
      for _ in 0..<200 {
        var schedule = ApplySchedule(count: count, isolated: Int(random.next() % 3))
        var committed = [Int](repeating: 0, count: count)
        var steps = 0
        while let attempt = schedule.next {
          steps += 1
          switch attempt {
          case .alone(let index):
            committed[index] += 1
            schedule.report(.committed)
          case .fast(let range), .careful(let range):
            switch random.next() % 3 {
            case 0:
              for index in range { committed[index] += 1 }
              schedule.report(.committed)
            case 1:
              let stop = range.lowerBound + Int(random.next() % UInt64(range.count))
              if case .careful = attempt {
                for index in range.lowerBound..<stop { committed[index] += 1 }
                schedule.report(.stoppedAt(stop))
              } else {
                schedule.report(.failed)
              }
            default:
              schedule.report(.failed)
            }
          }
        }
        #expect(committed == [Int](repeating: 1, count: count))
        #expect(steps <= 4 * count + 2)
      }
    }
  }

  static func unit(_ id: String, _ work: ApplyUnit.Work, type: String = "t") -> ApplyUnit {
    ApplyUnit(event: Event(source: "s.t", id: id, type: type, actor: "a", row: Row([])), work: work, metricLabel: type)
  }

  @Test func runsGroupBatchCapableHandlersAcrossRecords() {
    let batch = ApplyUnit.Work.handle(.swift(batchCapable: true))
    let units = [
      Self.unit("1", batch, type: "xp"), Self.unit("2", .record(.denied, reason: "no", ownsKey: true)),
      Self.unit("3", batch, type: "xp"), Self.unit("4", .handle(.sql(function: "f")), type: "undo"),
      Self.unit("5", batch, type: "xp"), Self.unit("6", batch, type: "other"),
    ]
    #expect(
      ApplyRuns.steps(units[...]) == [.record(1), .run([0, 2]), .handle(3), .run([4]), .run([5])])
    #expect(ApplyRuns.steps(units[1..<3]) == [.record(1), .run([2])])
  }
}
