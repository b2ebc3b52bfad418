import SluiceCore
import Testing

/// SPEC section 9: which pending deliveries go next, one transition a line.
@Suite struct DeliverySchedulerTests {
  func entry(_ id: Int64, _ actor: String?, attempts: Int = 0, due: Int64 = 0) -> OutboxEntry {
    OutboxEntry(id: id, actor: actor, attempts: attempts, dueAt: due)
  }

  @Test func oneActorOneAtATimeOthersInParallel() {
    var scheduler = DeliveryScheduler(capacity: 100)
    scheduler.add([entry(1, "ann"), entry(2, "ann"), entry(3, "bob"), entry(4, "cat")], now: 0)
    #expect(scheduler.take(limit: 10, now: 0).map(\.id) == [1, 3, 4])
    #expect(scheduler.take(limit: 10, now: 0).isEmpty)
    scheduler.finished(1, attempts: 1, retryAt: nil, now: 0)
    #expect(scheduler.take(limit: 10, now: 0).map(\.id) == [2])
    #expect(scheduler.inFlight == 3)
  }

  @Test func maxInFlightLimitsTheTake() {
    var scheduler = DeliveryScheduler(capacity: 100)
    scheduler.add((1...5).map { entry($0, "actor\($0)") }, now: 0)
    #expect(scheduler.take(limit: 2, now: 0).map(\.id) == [1, 2])
    #expect(scheduler.take(limit: 2, now: 0).map(\.id) == [3, 4])
  }

  @Test func aRetryHoldsItsChainBackUntilDue() {
    var scheduler = DeliveryScheduler(capacity: 100)
    scheduler.add([entry(1, "ann"), entry(2, "ann"), entry(3, "bob")], now: 0)
    _ = scheduler.take(limit: 10, now: 0)
    scheduler.finished(1, attempts: 1, retryAt: 500, now: 0)
    #expect(scheduler.nextDue == 500)
    #expect(scheduler.take(limit: 10, now: 499).isEmpty)
    #expect(scheduler.take(limit: 10, now: 500).map { ($0.id, $0.attempts) }.first! == (1, 1))
    scheduler.finished(1, attempts: 2, retryAt: nil, now: 500)
    #expect(scheduler.take(limit: 10, now: 500).map(\.id) == [2])
  }

  @Test func aLateLowerIdGoesBeforeTheRestOfItsChain() {
    var scheduler = DeliveryScheduler(capacity: 100)
    scheduler.add([entry(5, "ann"), entry(6, "ann")], now: 0)
    #expect(scheduler.take(limit: 10, now: 0).map(\.id) == [5])
    scheduler.cursor = 0
    scheduler.add([entry(3, "ann"), entry(5, "ann"), entry(6, "ann")], now: 0)  // committed out of id order
    #expect(scheduler.take(limit: 10, now: 0).isEmpty)  // 5 is still in flight
    scheduler.finished(5, attempts: 1, retryAt: nil, now: 0)
    #expect(scheduler.take(limit: 10, now: 0).map(\.id) == [3])
    scheduler.finished(3, attempts: 1, retryAt: nil, now: 0)
    #expect(scheduler.take(limit: 10, now: 0).map(\.id) == [6])
  }

  @Test func theWindowIsBoundedAndTheCursorStopsAtWhatWasNotTaken() {
    var scheduler = DeliveryScheduler(capacity: 3)
    scheduler.add((1...5).map { entry($0, "ann") }, now: 0)
    #expect(scheduler.held == 3)
    #expect(scheduler.cursor == 3)
    #expect(scheduler.room == 0)
    _ = scheduler.take(limit: 1, now: 0)
    scheduler.finished(1, attempts: 1, retryAt: nil, now: 0)
    #expect(scheduler.room == 1)
    scheduler.add([entry(4, "ann"), entry(5, "ann")], now: 0)
    #expect(scheduler.cursor == 4)
  }

  @Test func aRescanSkipsWhatIsHeldAndAdvancesPastIt() {
    var scheduler = DeliveryScheduler(capacity: 10)
    scheduler.add([entry(1, "ann"), entry(2, "bob")], now: 0)
    scheduler.cursor = 0
    scheduler.add([entry(1, "ann"), entry(2, "bob")], now: 0)
    #expect(scheduler.held == 2)
    #expect(scheduler.cursor == 2)
    #expect(scheduler.take(limit: 10, now: 0).map(\.id) == [1, 2])
  }
}

@Suite struct DeliveryRulesTests {
  let rules = DeliveryRules(maxAttempts: 3, backoffMilliseconds: 1000)

  @Test(arguments: [200, 201, 204, 299]) func twoHundredsAreDelivered(_ status: Int) {
    #expect(rules.decide(.answered(status: status, retryAfterSeconds: nil), attempts: 1, unit: 0.5) == .delivered)
  }

  @Test(arguments: [408, 425, 429, 500, 502, 503, 599]) func retryableStatusesAreRetried(_ status: Int) {
    #expect(
      rules.decide(.answered(status: status, retryAfterSeconds: nil), attempts: 1, unit: 0.5)
        == .retry(afterMilliseconds: 500))
    #expect(rules.decide(.answered(status: status, retryAfterSeconds: nil), attempts: 3, unit: 0.5) == .dead)
  }

  @Test(arguments: [100, 301, 302, 400, 401, 403, 404, 410, 422]) func anythingElseIsDeadAtOnce(_ status: Int) {
    #expect(rules.decide(.answered(status: status, retryAfterSeconds: nil), attempts: 1, unit: 0.5) == .dead)
  }

  @Test func backoffDoublesWithFullJitterUpToTenMinutes() {
    #expect(rules.decide(.failed("timeout"), attempts: 2, unit: 0.999) == .retry(afterMilliseconds: 1998))
    let many = DeliveryRules(maxAttempts: 100, backoffMilliseconds: 1000)
    #expect(many.decide(.failed("reset"), attempts: 30, unit: 0.5) == .retry(afterMilliseconds: 300_000))
    #expect(many.decide(.failed("reset"), attempts: 1, unit: 0) == .retry(afterMilliseconds: 1))
  }

  @Test func retryAfterReplacesTheBackoffUpToTheCeiling() {
    #expect(
      rules.decide(.answered(status: 429, retryAfterSeconds: 7), attempts: 1, unit: 0.5)
        == .retry(afterMilliseconds: 7000))
    #expect(
      rules.decide(.answered(status: 503, retryAfterSeconds: 86_400), attempts: 1, unit: 0.5)
        == .retry(afterMilliseconds: 600_000))
    #expect(rules.decide(.answered(status: 429, retryAfterSeconds: 7), attempts: 3, unit: 0.5) == .dead)
  }
}

/// Findings of the attack review, one test each.
@Suite struct DeliverySchedulerAttackTests {
  @Test func oneActorsBacklogCannotFillTheWindow() {
    var scheduler = DeliveryScheduler(capacity: 10, chainCapacity: 3)
    scheduler.add((1...8).map { OutboxEntry(id: $0, actor: "mallory") } + [OutboxEntry(id: 9, actor: "alice")], now: 0)
    #expect(scheduler.held == 4)
    #expect(scheduler.take(limit: 10, now: 0).map(\.id) == [1, 9])
    #expect(!scheduler.refillWanted)
    scheduler.finished(1, attempts: 1, retryAt: nil, now: 0)
    #expect(scheduler.refillWanted)  // mallory's chain passed entries over and has room again
    scheduler.startRescan()
    #expect(!scheduler.refillWanted)
    scheduler.add((2...9).map { OutboxEntry(id: $0, actor: $0 == 9 ? "alice" : "mallory") }, now: 0)
    #expect(scheduler.held == 4)
  }

  @Test func actorsAreComparedByteWise() {
    var scheduler = DeliveryScheduler()
    // "K" and the Kelvin sign are equal as Swift Strings, distinct in Postgres.
    scheduler.add([OutboxEntry(id: 1, actor: "user_\u{212A}1"), OutboxEntry(id: 2, actor: "user_K1")], now: 0)
    #expect(scheduler.take(limit: 10, now: 0).map(\.id) == [1, 2])
  }

  @Test func anEntryPutBackByTheOperatorTakesTheTablesAttemptsAndDueTime() {
    var scheduler = DeliveryScheduler()
    scheduler.add([OutboxEntry(id: 1, actor: "ann")], now: 0)
    _ = scheduler.take(limit: 1, now: 0)
    scheduler.finished(1, attempts: 9, retryAt: 600_000, now: 0)
    #expect(scheduler.take(limit: 1, now: 1000).isEmpty)
    scheduler.add([OutboxEntry(id: 1, actor: "ann", attempts: 0, dueAt: 0)], now: 1000)  // `outbox retry`
    #expect(scheduler.take(limit: 1, now: 1000).map(\.attempts) == [0])
  }

  @Test func aHugeRetryAfterIsClampedNotATrap() {
    let rules = DeliveryRules(maxAttempts: 10, backoffMilliseconds: 1000)
    #expect(
      rules.decide(.answered(status: 503, retryAfterSeconds: 10_000_000_000_000_000), attempts: 1, unit: 0)
        == .retry(afterMilliseconds: 600_000))
    #expect(
      rules.decide(.answered(status: 503, retryAfterSeconds: .max), attempts: 1, unit: 0)
        == .retry(afterMilliseconds: 600_000))
  }
}
