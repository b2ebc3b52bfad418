import SluiceCore
import Testing

@Suite struct BackfillProgressTests {
  @Test func reportsEveryFiveSecondsAndAtTheEnd() {
    var progress = BackfillProgress(source: "xp.actions", total: 1_500_000, now: 100)
    do { let due = progress.advance(to: 10_000, now: 101); #expect(!due) }
    do { let due = progress.advance(to: 100_000, now: 104.9); #expect(!due) }
    do { let due = progress.advance(to: 125_000, now: 105); #expect(due) }
    do { let due = progress.advance(to: 200_000, now: 108); #expect(!due) }
    #expect(progress.line(now: 105) == "xp.actions: 200000 of 1500000 rows (13.3%), 40000 rows/s, ETA 33 s")
    do { let due = progress.advance(to: 1_500_000, now: 109); #expect(due, "the end is always reported") }
    #expect(progress.percent == 100)
  }

  @Test func rateEtaAndBar() {
    var progress = BackfillProgress(source: "s", total: 1000, now: 0)
    #expect(progress.etaSeconds(now: 0) == nil)
    #expect(progress.line(now: 0) == "s: 0 of 1000 rows (0.0%), 0 rows/s, ETA unknown")
    _ = progress.advance(to: 250, now: 50)
    #expect(progress.rate(now: 50) == 5)
    #expect(progress.etaSeconds(now: 50) == 150)
    #expect(progress.bar(now: 50, width: 8) == "[##......] 25.0% 250/1000 5 rows/s ETA 2 min 30 s")
    _ = progress.advance(to: 5000, now: 60)
    #expect(progress.done == 1000, "never past the total")
    let empty = BackfillProgress(source: "e", total: 0, now: 0)
    #expect(empty.percent == 100)
    #expect(empty.bar(now: 1, width: 4) == "[####] 100.0% 0/0 0 rows/s ETA ?")
  }
}
