/// What a session does with its replication slot (SPEC 8's lost-slot and
/// takeover rules), decided from what it found: pure, so that the rule is
/// a table (`SessionPlanTests`) and `Daemon` only reads the facts and
/// carries the plan out.
public enum SessionPlan: Sendable, Equatable {
  /// Stream from the slot, at the later of its confirmed position and the
  /// session's own (the policy comes from the mirror).
  case resume(slotConfirmed: LSN?)
  /// Make a new slot and backfill, in its exported snapshot, every source
  /// row the ledger has not seen; drop the old slot first if there is one,
  /// and log `warning` if given.
  case recreate(dropFirst: Bool, warning: String?)
  /// Do not start: the error says what to change.
  case refuse(String)

  /// The slot as `pg_replication_slots` shows it.
  public struct Slot: Sendable, Equatable {
    public var confirmedFlush: LSN?
    public var plugin: String?
    public var database: String?
    public var inThisDatabase: Bool
    /// `wal_status`: `lost` once the WAL it needed is gone.
    public var walStatus: String?

    public init(confirmedFlush: LSN?, plugin: String?, database: String?, inThisDatabase: Bool, walStatus: String?) {
      self.confirmedFlush = confirmedFlush
      self.plugin = plugin
      self.database = database
      self.inThisDatabase = inThisDatabase
      self.walStatus = walStatus
    }
  }

  /// - slot: the slot named `name`, if it exists;
  /// - mirrorReady: whether the policy mirror of a finished setup stands
  ///   (`stream_state.mirror_ready`): then the ledger has streamed from a
  ///   slot of this name, and a slot without it never finished its setup.
  public static func decide(slot: Slot?, mirrorReady: Bool, name: String) -> SessionPlan {
    if let slot, !slot.inThisDatabase {
      // Slot names are unique in the whole cluster, not per database.
      return .refuse(
        "replication slot \(name) belongs to database \(slot.database ?? "?"): set SLUICE_SLOT to another name for this database"
      )
    }
    guard mirrorReady else {
      // Made by someone else, or our own setup of it never finished: nothing
      // was consumed from it, so start over with a slot and snapshot of our own.
      return slot == nil
        ? .recreate(dropFirst: false, warning: nil)
        : .recreate(dropFirst: true, warning: "slot exists without a policy mirror; recreating it")
    }
    guard let slot else {
      return .recreate(
        dropFirst: false,
        warning:
          "slot is missing (dropped, or a promoted standby without it): recreating it and backfilling the source rows the ledger has not seen"
      )
    }
    if slot.walStatus == "lost" {
      return .recreate(
        dropFirst: true,
        warning:
          "slot was invalidated (wal_status lost): recreating it and backfilling the source rows the ledger has not seen"
      )
    }
    guard slot.plugin == "pgoutput" else {
      return .refuse("slot \(name) uses plugin \(slot.plugin ?? "?"), not pgoutput")
    }
    return .resume(slotConfirmed: slot.confirmedFlush)
  }
}
