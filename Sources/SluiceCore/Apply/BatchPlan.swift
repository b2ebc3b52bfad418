/// The ledger's statuses (SPEC section 2).
public enum EventStatus: String, Sendable, CaseIterable {
  case applied, rejected, denied, duplicate, dead
}

/// How an allowed event is handled, chosen as of its position in the WAL.
public enum HandlerChoice: Sendable, Equatable {
  /// A Swift handler compiled into the daemon.
  case swift(batchCapable: Bool)
  /// A SQL function from `sluice.handlers`.
  case sql(function: String)
  /// `sluice.add_webhook`: the event is queued for delivery to an endpoint.
  case webhook(endpoint: String)
}

extension HandlerChoice {
  public init(_ handler: Policy.SQLHandler) {
    switch handler {
    case .function(let function): self = .sql(function: function)
    case .webhook(let endpoint): self = .webhook(endpoint: endpoint)
    }
  }
}

/// The Swift handlers a daemon carries, by type (true: batch-capable).
/// A Swift handler wins over a SQL one for the same type.
public struct HandlerCatalog: Sendable {
  public var swift: [Bytewise: Bool]

  public init(swift: [String: Bool] = [:]) {
    self.swift = Dictionary(uniqueKeysWithValues: swift.map { (Bytewise($0.key), $0.value) })
  }

  public func choice(for type: String, in policy: Policy) -> HandlerChoice? {
    if let batchCapable = swift[Bytewise(type)] { return .swift(batchCapable: batchCapable) }
    return policy.sqlHandler(for: type).map(HandlerChoice.init)
  }

  /// The `type` label of metrics: the type when the configuration names it
  /// (a rule for it, a SQL or Swift handler), else "other". Clients choose
  /// types freely; they must not choose how many series /metrics has.
  public func metricLabel(for type: String, in policy: Policy) -> String {
    swift[Bytewise(type)] != nil || policy.namesType(type) ? type : "other"
  }
}

/// An event's identity in the ledger: (source, event id), byte-wise. The
/// ledger maps ids one to one (`sluice.ledger_id`), so distinct keys here
/// are distinct ledger rows.
public struct LedgerKey: Hashable, Sendable {
  public var source: Bytewise
  public var id: Bytewise
  public var synthetic: Bool
  public init(source: String, id: String, synthetic: Bool = false) {
    self.source = Bytewise(source)
    self.id = Bytewise(id)
    self.synthetic = synthetic
  }
  public init(_ event: Event) { self.init(source: event.source, id: event.id, synthetic: event.idIsSynthetic) }
}

/// What an allowed event with a dedupe key owns: (type, actor, key), byte-wise.
public struct DedupeKey: Hashable, Sendable {
  public var type: Bytewise
  public var actor: Bytewise
  public var key: Bytewise
  public init(type: String, actor: String, key: String) {
    self.type = Bytewise(type)
    self.actor = Bytewise(actor)
    self.key = Bytewise(key)
  }
}

/// One ledger row to write.
public struct LedgerEntry: Sendable, Equatable {
  public var event: Event
  public var status: EventStatus
  public var reason: String?
  public var attempts: Int
  /// False for rows that could not become events: their key is not stored, so they own none.
  public var ownsKey: Bool
  /// The metrics `type` label (see `HandlerCatalog.metricLabel`).
  public var metricLabel: String

  public init(
    event: Event, status: EventStatus, reason: String?, attempts: Int, ownsKey: Bool = true, metricLabel: String
  ) {
    self.event = event
    self.status = status
    self.reason = reason
    self.attempts = attempts
    self.ownsKey = ownsKey
    self.metricLabel = metricLabel
  }
}

/// One event of a batch to apply, decided before any handler runs.
public struct ApplyUnit: Sendable, Equatable {
  public enum Work: Sendable, Equatable {
    /// The outcome is known: malformed, denied, duplicate, or allowed with no handler.
    case record(EventStatus, reason: String, ownsKey: Bool)
    /// An allowed event whose handler must run.
    case handle(HandlerChoice)
  }
  public var event: Event
  public var work: Work
  public var metricLabel: String

  public init(event: Event, work: Work, metricLabel: String) {
    self.event = event
    self.work = work
    self.metricLabel = metricLabel
  }

  /// The ledger row for this unit with an outcome.
  public func entry(_ status: EventStatus, reason: String?, attempts: Int) -> LedgerEntry {
    var ownsKey = true
    if case .record(_, _, let owns) = work { ownsKey = owns }
    return LedgerEntry(
      event: event, status: status, reason: reason, attempts: attempts, ownsKey: ownsKey, metricLabel: metricLabel)
  }

  /// The ledger row of a `.record` unit (nil for `.handle`).
  public var recordedEntry: LedgerEntry? {
    guard case .record(let status, let reason, _) = work else { return nil }
    return entry(status, reason: reason, attempts: 0)
  }
}

/// An event of a batch as the policy at its position judges it, before
/// replays and dedupe ownership are known (those need the ledger).
public struct Candidate: Sendable, Equatable {
  public enum Decision: Sendable, Equatable {
    /// The row could not become an event (missing column, NULL, over a limit).
    case malformed(String)
    case denied(String)
    /// Allowed; the handler as of the event's position (nil: none).
    case allowed(HandlerChoice?)
  }
  public var event: Event
  public var decision: Decision
  /// The metrics `type` label (see `HandlerCatalog.metricLabel`).
  public var metricLabel: String
}

/// A batch of stream items turned into decisions.
public struct BatchPlan: Sendable {
  public var candidates: [Candidate] = []
  /// Configuration changes of the source transactions this batch completes,
  /// in stream order: the policy mirror gets them with the batch's commit.
  public var mirrorChanges: [Policy.Change] = []
  /// End LSN of the last source transaction the batch completes.
  public var completed: LSN?
  /// Tables registered as sources by the transactions this batch completes
  /// (they were not sources before), with the registering transaction's
  /// xid: their rows from older transactions need a backfill.
  public var registeredSources: [(relation: String, xid: UInt32?)] = []
  /// Updates, deletes and truncates of sources, and inserts into tables that are not sources.
  public var ignored = 0

  /// Whether anything must be written.
  public var isEmpty: Bool {
    candidates.isEmpty && mirrorChanges.isEmpty && completed == nil && registeredSources.isEmpty
  }

  /// Which streamed events may already be in the ledger.
  public enum ReplayWindow: Sendable, Equatable {
    /// Any of them (after a ledger row appeared under the batch).
    case all
    /// Those of transactions that committed at or before the ledger's high
    /// water as the session found it: later ones cannot have a ledger row,
    /// since within a session the stream never repeats itself.
    case through(LSN)
    /// None: the slot has never committed a streamed event (a new slot).
    case none
  }

  /// Events that may be replays and must be looked up in the ledger. Rows
  /// read outside the stream (no commit LSN) always are.
  public func replaySuspects(_ window: ReplayWindow) -> [Event] {
    candidates.lazy.map(\.event).filter { Self.inWindow($0, window) }
  }

  /// Streamed events outside the window that a sealed ledger partition may
  /// hold (an id seen long ago, its row deleted, inserted again): looked up
  /// in the sealed partitions only. The hot partition's unique index
  /// answers for itself, so this lookup need not wait for the batch sent
  /// before (which writes only to the hot partition).
  public func sealedSuspects(_ window: ReplayWindow, mayHold: (Event) -> Bool) -> [Event] {
    candidates.lazy.map(\.event).filter { !Self.inWindow($0, window) && mayHold($0) }
  }

  private static func inWindow(_ event: Event, _ window: ReplayWindow) -> Bool {
    guard let commit = event.commitLSN else { return true }
    switch window {
    case .all: return true
    case .through(let highWater): return commit <= highWater
    case .none: return false
    }
  }

  /// Allowed events with a dedupe key, among those not seen: their keys' owners must be looked up.
  public func ownerSuspects(seen: Set<LedgerKey>) -> [Event] {
    candidates.compactMap { candidate in
      guard case .allowed = candidate.decision, candidate.event.dedupeKey != nil,
        !seen.contains(LedgerKey(candidate.event))
      else { return nil }
      return candidate.event
    }
  }

  /// The units to apply, in stream order: replays dropped (also a row seen
  /// twice in one batch), each allowed event's dedupe key claimed or found
  /// owned. `owners` holds the keys earlier events own (from the ledger).
  public func units(seen: Set<LedgerKey>, owners ledgerOwners: [DedupeKey: String]) -> [ApplyUnit] {
    var owners = ledgerOwners
    var inBatch = Set<LedgerKey>()
    var units: [ApplyUnit] = []
    units.reserveCapacity(candidates.count)
    for candidate in candidates {
      let event = candidate.event
      let key = LedgerKey(event)
      guard !seen.contains(key), inBatch.insert(key).inserted else { continue }
      func record(_ status: EventStatus, _ reason: String, ownsKey: Bool = true) {
        units.append(
          ApplyUnit(
            event: event, work: .record(status, reason: reason, ownsKey: ownsKey), metricLabel: candidate.metricLabel))
      }
      switch candidate.decision {
      case .malformed(let reason):
        record(.rejected, reason, ownsKey: false)
      case .denied(let reason):
        record(.denied, reason)
      case .allowed(let handler):
        if let dedupe = event.dedupeKey {
          let owned = DedupeKey(type: event.type, actor: event.actor ?? "", key: dedupe)
          if let owner = owners[owned] {
            record(.duplicate, "dedupe key '\(dedupe)' already used by event \(owner)")
            continue
          }
          owners[owned] = "\(event.source)/\(event.id)"
        }
        guard let handler else {
          record(.dead, "no handler for \(event.type)")
          continue
        }
        units.append(ApplyUnit(event: event, work: .handle(handler), metricLabel: candidate.metricLabel))
      }
    }
    return units
  }
}

/// Turns stream items into batch plans, keeping the policy as of the stream
/// position: every event is judged, and its handler chosen, by the
/// configuration committed before it and changed earlier in its own transaction.
public struct StreamPlanner: Sendable {
  struct OpenTransaction: Sendable {
    var xid: UInt32
    var commitLSN: LSN
    var commitTime: PostgresTimestamp
    /// Its changes are already in the mirror the policy was loaded from.
    var inMirror: Bool
  }

  /// The policy after the last item planned.
  public private(set) var policy: Policy
  public let catalog: HandlerCatalog
  /// Source transactions that committed before this LSN are in the policy
  /// already (it was loaded from a mirror written at that point): on a
  /// replay their configuration changes are not applied again.
  public let mirrorPosition: LSN?
  private var open: OpenTransaction?
  /// Configuration changes of the open transaction, written to the mirror with its commit.
  private var pendingMirror: [Policy.Change] = []
  private var pendingRegistrations: [(relation: String, xid: UInt32?)] = []

  /// Verifies the rows of `'signed'` sources (SPEC 13); without it their events are denied.
  public let signatures: SignatureCheck?

  public init(
    policy: Policy, catalog: HandlerCatalog, mirrorPosition: LSN? = nil, signatures: SignatureCheck? = nil
  ) {
    self.policy = policy
    self.catalog = catalog
    self.mirrorPosition = mirrorPosition
    self.signatures = signatures
  }

  public mutating func plan(_ items: some Sequence<StreamItem>) -> BatchPlan {
    var plan = BatchPlan()
    var unverified: [Unverified] = []
    for item in items {
      switch item {
      case .begin(let xid, let commitLSN, let commitTime):
        let inMirror = mirrorPosition.map { commitLSN < $0 } ?? false
        open = OpenTransaction(xid: xid, commitLSN: commitLSN, commitTime: commitTime, inMirror: inMirror)
        pendingMirror.removeAll()
        pendingRegistrations.removeAll()
      case .commit(let endLSN, _, _):
        plan.mirrorChanges += pendingMirror
        plan.registeredSources += pendingRegistrations
        pendingMirror.removeAll()
        pendingRegistrations.removeAll()
        open = nil
        plan.completed = endLSN
      case .configChange(let change):
        guard open?.inMirror != true else { continue }
        if case .upsert(.sources, let relation, _) = change, policy.source(relation) == nil {
          pendingRegistrations.append((relation, open?.xid))
        }
        policy.apply(change)
        pendingMirror.append(change)
      case .ignored:
        plan.ignored += 1
      case .keepalive:
        continue
      case .insert(let relation, let row, let lsn):
        // A transaction the mirror already holds was applied whole: each of
        // its events has a ledger row, and judging its rows again by the
        // mirror's later policy could make events of rows that were not.
        if open?.inMirror == true { continue }
        guard let source = policy.source(relation) else {
          plan.ignored += 1
          continue
        }
        add(candidate(source, row, position: lsn), to: &plan, &unverified)
      }
    }
    settle(unverified, in: &plan)
    return plan
  }

  /// A candidate whose signature is still to be verified: allowed or denied
  /// by the rules as if proven, and denied if the signature does not verify.
  struct Unverified {
    var index: Int
    var signature: SignatureToVerify
    /// The row as read (a denied event keeps all of it; a proven one only what was signed).
    var row: Row
  }

  private func add(_ made: (Candidate, Unverified?), to plan: inout BatchPlan, _ unverified: inout [Unverified]) {
    if var pending = made.1 {
      pending.index = plan.candidates.count
      unverified.append(pending)
    }
    plan.candidates.append(made.0)
  }

  /// Verifies a batch's signatures together (on several threads, when the
  /// verifier can): the key and message of each were decided in stream order.
  private func settle(_ unverified: [Unverified], in plan: inout BatchPlan) {
    guard !unverified.isEmpty, let signatures else { return }
    let results = signatures.verifier.verifyAll(unverified.map(\.signature))
    for (pending, verified) in zip(unverified, results) where !verified {
      plan.candidates[pending.index].event.row = pending.row
      plan.candidates[pending.index].decision = .denied(pending.signature.failure)
    }
  }

  /// A row read outside the stream (backfill). `beforeGuard`: written
  /// before its table's `'session'` guard existed (SPEC 13), so its actor was never proven.
  public struct ReadRow: Sendable {
    public var relation: String
    public var row: Row
    public var beforeGuard: Bool
    public init(relation: String, row: Row, beforeGuard: Bool = false) {
      self.relation = relation
      self.row = row
      self.beforeGuard = beforeGuard
    }
  }

  /// Plans rows read outside the stream (backfill): no commit LSN, the current policy.
  public func plan(rows: [ReadRow]) -> BatchPlan {
    var plan = BatchPlan()
    var unverified: [Unverified] = []
    for read in rows {
      guard let source = policy.source(read.relation) else {
        plan.ignored += 1
        continue
      }
      add(candidate(source, read.row, position: nil, beforeGuard: read.beforeGuard), to: &plan, &unverified)
    }
    settle(unverified, in: &plan)
    return plan
  }

  public static let beforeGuardReason = "written before the source's guard"

  private func candidate(_ source: SourceMapping, _ row: Row, position: LSN?, beforeGuard: Bool = false) -> (
    Candidate, Unverified?
  ) {
    var (event, malformed) = source.event(
      from: row, commitLSN: open?.commitLSN, committedAt: open?.commitTime, xid: open?.xid, position: position)
    let label = catalog.metricLabel(for: event.type, in: policy)
    if let malformed { return (Candidate(event: event, decision: .malformed(malformed), metricLabel: label), nil) }
    var unverified: Unverified?
    switch proof(source, event, beforeGuard: beforeGuard) {
    case .unclaimed: break
    case .denied(let denial): return (Candidate(event: event, decision: .denied(denial), metricLabel: label), nil)
    case .verify(let signature): unverified = Unverified(index: -1, signature: signature, row: event.row)
    }
    event.row = source.signedView(of: event.row)
    switch policy.evaluate(event) {
    case .deny(let reason):
      return (Candidate(event: event, decision: .denied(reason), metricLabel: label), unverified)
    case .allow:
      let choice = catalog.choice(for: event.type, in: policy)
      return (Candidate(event: event, decision: .allowed(choice), metricLabel: label), unverified)
    }
  }

  /// SPEC 13, before the rules: why the row does not prove its actor, or
  /// the signature that proves it if it verifies.
  private func proof(_ source: SourceMapping, _ event: Event, beforeGuard: Bool) -> SignatureCheck.Verdict {
    switch source.actorFrom {
    case .column: return .unclaimed
    case .session:
      guard beforeGuard, !source.trustsExisting else { return .unclaimed }
      return .denied("event type '\(event.type)' denied: \(Self.beforeGuardReason) (its actor was never proven)")
    case .signed(let columns):
      guard let signatures else { return .denied("signed event denied: this daemon cannot verify signatures") }
      return signatures.verdict(
        of: event, columns: columns, keys: { policy.actorKey(actor: $0, keyID: $1) },
        keyIsForeign: { policy.keyBelongsToOthers(actor: $0, keyID: $1) })
    }
  }
}
