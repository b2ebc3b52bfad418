import Testing

@testable import SluiceCore

@Suite struct AckTrackerTests {
  @Test func confirmsOnlyAfterDurable() {
    var ack = AckTracker(confirmed: LSN(100))
    ack.began()
    ack.committed(end: LSN(200))
    #expect(ack.confirmed == LSN(100))
    ack.durable(through: LSN(200))
    #expect(ack.confirmed == LSN(200))
  }

  @Test func keepaliveConfirmedOnlyWhenIdle() {
    var ack = AckTracker(confirmed: LSN(100))
    ack.keepalive(walEnd: LSN(150))
    #expect(ack.confirmed == LSN(150))
    ack.began()
    ack.keepalive(walEnd: LSN(300))
    #expect(ack.confirmed == LSN(150), "a transaction is open")
    ack.committed(end: LSN(320))
    ack.keepalive(walEnd: LSN(400))
    #expect(ack.confirmed == LSN(150), "a committed transaction is not durable yet")
    ack.durable(through: LSN(320))
    #expect(ack.confirmed == LSN(400), "the keepalive after it is remembered")
    ack.keepalive(walEnd: LSN(450))
    #expect(ack.confirmed == LSN(450))
  }

  @Test func keepaliveDuringAnOpenTransactionIsNotRemembered() {
    var ack = AckTracker(confirmed: LSN(100))
    ack.began()
    ack.keepalive(walEnd: LSN(900))  // sent between the rows of the transaction ending at 900
    ack.committed(end: LSN(900))
    #expect(ack.confirmed == LSN(100))
    #expect(ack.received == LSN(900))
  }

  @Test func asynchronousCommitsWaitForTheLocalFlush() {
    var ack = AckTracker(confirmed: LSN(0))
    ack.began()
    ack.committed(end: LSN(10))
    ack.began()
    ack.committed(end: LSN(20))
    ack.committedLocally(through: LSN(10), commitRecord: LSN(5000))
    ack.committedLocally(through: LSN(20), commitRecord: LSN(6000))
    #expect(ack.confirmed == LSN(0), "committed, not flushed")
    #expect(ack.awaitingFlush)
    ack.localFlushed(LSN(4999))
    #expect(ack.confirmed == LSN(0), "the flush has not passed the first commit record")
    ack.localFlushed(LSN(5500))
    #expect(ack.confirmed == LSN(10))
    ack.keepalive(walEnd: LSN(30))
    #expect(ack.confirmed == LSN(10), "the keepalive waits for the transaction before it")
    ack.localFlushed(LSN(6000))
    #expect(ack.confirmed == LSN(30))
    #expect(!ack.awaitingFlush)
  }

  @Test func resetForgetsUnflushedCommits() {
    var ack = AckTracker(confirmed: LSN(0))
    ack.began()
    ack.committed(end: LSN(10))
    ack.committedLocally(through: LSN(10), commitRecord: LSN(500))
    ack.reset()
    #expect(!ack.awaitingFlush)
    ack.localFlushed(LSN(1000))
    #expect(ack.confirmed == LSN(0), "a commit the crash may have lost is never confirmed")
  }

  @Test func neverGoesBackwards() {
    var ack = AckTracker(confirmed: LSN(500))
    ack.keepalive(walEnd: LSN(400))
    #expect(ack.confirmed == LSN(500))
    ack.began()
    ack.committed(end: LSN(450))
    ack.durable(through: LSN(450))
    #expect(ack.confirmed == LSN(500))
    ack.durable(through: LSN(100))
    #expect(ack.confirmed == LSN(500))
  }

  @Test func confirmsInCommitOrderOnly() {
    var ack = AckTracker(confirmed: LSN(0))
    ack.began()
    ack.committed(end: LSN(10))
    ack.began()
    ack.committed(end: LSN(20), durable: true)  // nothing to handle, but waits for the one before
    #expect(ack.confirmed == LSN(0))
    ack.durable(through: LSN(10))
    #expect(ack.confirmed == LSN(20))
    #expect(!ack.inFlight)
  }

  @Test func durableThroughCoversEarlierTransactions() {
    var ack = AckTracker(confirmed: LSN(0))
    for end in stride(from: 10, through: 50, by: 10) {
      ack.began()
      ack.committed(end: LSN(UInt64(end)))
    }
    ack.durable(through: LSN(30))
    #expect(ack.confirmed == LSN(30))
    #expect(ack.inFlight)
    ack.durable(through: LSN(50))
    #expect(ack.confirmed == LSN(50))
    #expect(!ack.inFlight)
  }

  @Test func resetForgetsInFlightButKeepsConfirmed() {
    var ack = AckTracker(confirmed: LSN(10))
    ack.began()
    ack.committed(end: LSN(20))
    ack.began()
    ack.reset()
    #expect(!ack.inFlight)
    #expect(ack.confirmed == LSN(10))
    #expect(ack.received == LSN(10))
  }

  @Test func statusUpdateReportsReceivedAndConfirmed() {
    var ack = AckTracker(confirmed: LSN(10))
    ack.received(LSN(99))
    let update = ack.statusUpdate(clientTime: 5)
    #expect(update.written == LSN(99))
    #expect(update.flushed == LSN(10))
    #expect(update.applied == LSN(10))
  }

  @Test func manyTransactionsStayConsistent() {
    var ack = AckTracker(confirmed: LSN(0))
    for end in 1...5000 {
      ack.began()
      ack.committed(end: LSN(UInt64(end)))
      if end % 7 == 0 { ack.durable(through: LSN(UInt64(end))) }
      #expect(ack.confirmed.value == UInt64(end / 7 * 7))
    }
  }
}
