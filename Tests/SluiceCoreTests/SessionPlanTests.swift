import SluiceCore
import Testing

/// SPEC 8's slot rules as a table: what the daemon does when it starts (or
/// reconnects) and finds its slot so. "What does the daemon do when the slot
/// is missing?" is a row here.
@Suite struct SessionPlanTests {
  typealias Slot = SessionPlan.Slot
  static let here = Slot(
    confirmedFlush: LSN(UInt64(0x100)), plugin: "pgoutput", database: "app", inThisDatabase: true, walStatus: "reserved"
  )

  static func with(_ change: (inout Slot) -> Void) -> Slot {
    var slot = here
    change(&slot)
    return slot
  }

  static let missing =
    "slot is missing (dropped, or a promoted standby without it): recreating it and backfilling the source rows the ledger has not seen"
  static let lost =
    "slot was invalidated (wal_status lost): recreating it and backfilling the source rows the ledger has not seen"
  static let unfinished = "slot exists without a policy mirror; recreating it"

  static let cases: [(String, Slot?, Bool, SessionPlan)] = [
    ("the first run: no slot, no mirror", nil, false, .recreate(dropFirst: false, warning: nil)),
    (
      "a slot with a finished setup resumes from its confirmed position", here, true,
      .resume(slotConfirmed: LSN(UInt64(0x100)))
    ),
    (
      "still streaming after wal_status 'unreserved'", with { $0.walStatus = "unreserved" }, true,
      .resume(slotConfirmed: LSN(UInt64(0x100)))
    ),
    (
      "the slot was dropped, or a promoted standby never had it", nil, true,
      .recreate(dropFirst: false, warning: missing)
    ),
    (
      "the WAL it needed is gone (max_slot_wal_keep_size)", with { $0.walStatus = "lost" }, true,
      .recreate(dropFirst: true, warning: lost)
    ),
    (
      "a slot someone else made, or our setup never finished", here, false,
      .recreate(dropFirst: true, warning: unfinished)
    ),
    (
      "a lost slot whose setup never finished", with { $0.walStatus = "lost" }, false,
      .recreate(dropFirst: true, warning: unfinished)
    ),
    (
      "a slot of that name in another database",
      with {
        $0.inThisDatabase = false; $0.database = "other"
      }, true,
      .refuse("replication slot s belongs to database other: set SLUICE_SLOT to another name for this database")
    ),
    (
      "another database's, even before any setup here",
      with {
        $0.inThisDatabase = false; $0.database = "other"
      }, false,
      .refuse("replication slot s belongs to database other: set SLUICE_SLOT to another name for this database")
    ),
    (
      "another output plugin", with { $0.plugin = "wal2json" }, true,
      .refuse("slot s uses plugin wal2json, not pgoutput")
    ),
  ]

  @Test func eachSlotStateHasItsPlan() {
    for (what, slot, mirrorReady, plan) in Self.cases {
      #expect(SessionPlan.decide(slot: slot, mirrorReady: mirrorReady, name: "s") == plan, "\(what)")
    }
  }
}
