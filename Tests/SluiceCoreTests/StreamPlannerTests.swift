import Testing

@testable import SluiceCore

/// The planner: verdicts, handlers, limits and dedupe ownership as of each
/// event's position, with no server.
@Suite struct StreamPlannerTests {
  static let source: Policy.Change = .upsert(
    .sources, key: "g.actions",
    row: [
      "relation": "g.actions", "event_type_column": "type", "actor_column": "user_id", "dedupe_column": "key",
      "scope_column": "scope",
    ])
  static func rule(_ id: String, _ type: String, _ role: String) -> Policy.Change {
    .upsert(.permissionRules, key: id, row: ["id": id, "event_type": type, "role": role])
  }
  static func grant(_ id: String, _ actor: String, _ role: String, scope: String? = nil) -> Policy.Change {
    .upsert(.actorRoles, key: id, row: ["id": id, "actor": actor, "role": role, "scope": scope])
  }
  static func handler(_ type: String, _ function: String) -> Policy.Change {
    .upsert(.handlers, key: type, row: ["event_type": type, "function": function])
  }
  static func row(_ id: String, _ type: String?, _ actor: String?, key: String? = nil, scope: String? = nil) -> Row {
    Row([
      ("id", .text(id)), ("type", type.map(ColumnValue.text) ?? .null),
      ("user_id", actor.map(ColumnValue.text) ?? .null),
      ("key", key.map(ColumnValue.text) ?? .null), ("scope", scope.map(ColumnValue.text) ?? .null),
    ])
  }
  static func insert(_ row: Row) -> StreamItem { .insert(relation: "g.actions", row: row, lsn: LSN(1)) }
  static func begin(_ commit: UInt64) -> StreamItem { .begin(xid: 7, commitLSN: LSN(commit), commitTime: 0) }
  static func commit(_ end: UInt64) -> StreamItem { .commit(endLSN: LSN(end), commitLSN: LSN(end - 1), commitTime: 0) }

  static func base() -> Policy {
    var policy = Policy()
    for change in [source, rule("1", "award", "player"), grant("1", "ann", "player"), handler("award", "g.award")] {
      policy.apply(change)
    }
    return policy
  }

  static func decisions(_ items: [StreamItem], policy: Policy = base(), catalog: HandlerCatalog = .init())
    -> [Candidate.Decision]
  {
    var planner = StreamPlanner(policy: policy, catalog: catalog)
    return planner.plan(items).candidates.map(\.decision)
  }

  static let long = String(repeating: "x", count: 1025)
  static let atLimit = String(repeating: "é", count: 512)  // 1,024 bytes

  @Test(arguments: [
    ("allowed, SQL handler", row("1", "award", "ann"), Candidate.Decision.allowed(.sql(function: "g.award"))),
    (
      "no rule", row("2", "other", "ann"),
      .denied("event type 'other' denied for actor 'ann': no permission rule allows this type")
    ),
    ("no role", row("3", "award", "bob"), .denied("event type 'award' denied for actor 'bob': needs role player")),
    ("NULL actor", row("4", "award", nil), .denied("event type 'award' denied: the actor is empty")),
    ("NULL type", row("5", nil, "ann"), .malformed("event type column \"type\" is NULL or empty")),
    ("actor over the limit", row("6", "award", long), .malformed("actor is 1025 bytes long; the limit is 1024")),
    ("type over the limit", row("7", long, "ann"), .malformed("type is 1025 bytes long; the limit is 1024")),
    ("id over the limit", row(long, "award", "ann"), .malformed("id is 1025 bytes long; the limit is 1024")),
    (
      "key over the limit", row("8", "award", "ann", key: long),
      .malformed("dedupe_key is 1025 bytes long; the limit is 1024")
    ),
    (
      "scope over the limit", row("9", "award", "ann", scope: long),
      .malformed("scope is 1025 bytes long; the limit is 1024")
    ),
    ("1,024 bytes is fine", row("10", "award", "ann", key: atLimit), .allowed(.sql(function: "g.award"))),
    (
      "canonically equal actor is another actor", row("11", "award", "ann\u{0301}"),
      .denied("event type 'award' denied for actor 'ann\u{0301}': needs role player")
    ),
  ])
  func decides(_ name: String, _ row: Row, _ expected: Candidate.Decision) {
    #expect(Self.decisions([Self.begin(10), Self.insert(row), Self.commit(20)]) == [expected], "\(name)")
  }

  @Test func missingColumnIsMalformedAndOwnsNoKey() {
    var planner = StreamPlanner(policy: Self.base(), catalog: .init())
    let row = Row([("id", .text("1")), ("type", .text("award")), ("user_id", .text("ann"))])  // no "key", no "scope"
    let plan = planner.plan([Self.insert(row), Self.insert(Row([("id", .text("2"))] + row.columns.dropFirst()))])
    #expect(
      plan.candidates.map(\.decision) == [
        .malformed("source g.actions has no column \"key\""), .malformed("source g.actions has no column \"key\""),
      ])
    let units = plan.units(seen: [], owners: [:])
    #expect(
      units.map(\.work) == [
        .record(.rejected, reason: "source g.actions has no column \"key\"", ownsKey: false),
        .record(.rejected, reason: "source g.actions has no column \"key\"", ownsKey: false),
      ])
    #expect(units.map { $0.recordedEntry?.ownsKey } == [false, false])
  }

  @Test func verdictAndHandlerAsOfThePosition() {
    let items: [StreamItem] = [
      Self.begin(10), Self.insert(Self.row("1", "award", "bob")),
      .configChange(Self.grant("2", "bob", "player")), Self.insert(Self.row("2", "award", "bob")),
      .configChange(.delete(.handlers, key: "award")), Self.insert(Self.row("3", "award", "bob")),
      .configChange(Self.handler("award", "g.award2")), Self.insert(Self.row("4", "award", "bob")),
      .configChange(.delete(.actorRoles, key: "2")), Self.insert(Self.row("5", "award", "bob")), Self.commit(20),
    ]
    #expect(
      Self.decisions(items) == [
        .denied("event type 'award' denied for actor 'bob': needs role player"), .allowed(.sql(function: "g.award")),
        .allowed(nil), .allowed(.sql(function: "g.award2")),
        .denied("event type 'award' denied for actor 'bob': needs role player"),
      ])
  }

  @Test func swiftHandlerWinsAndLabelsAreBounded() {
    var planner = StreamPlanner(policy: Self.base(), catalog: HandlerCatalog(swift: ["award": true]))
    let plan = planner.plan([
      Self.insert(Self.row("1", "award", "ann")), Self.insert(Self.row("2", "random-\(UInt32.max)", "ann")),
    ])
    #expect(plan.candidates.map(\.decision).first == .allowed(.swift(batchCapable: true)))
    #expect(plan.candidates.map(\.metricLabel) == ["award", "other"])
  }

  @Test func mirrorChangesWaitForTheirCommit() {
    var planner = StreamPlanner(policy: Self.base(), catalog: .init())
    let first = planner.plan([Self.begin(10), .configChange(Self.rule("2", "undo", "player"))])
    #expect(first.mirrorChanges.isEmpty && first.completed == nil)
    let second = planner.plan([Self.insert(Self.row("1", "undo", "ann")), Self.commit(20)])
    #expect(second.mirrorChanges == [Self.rule("2", "undo", "player")])
    #expect(second.completed == LSN(20))
    #expect(second.candidates.map(\.decision) == [.allowed(nil)])
  }

  @Test func transactionsAlreadyInTheMirrorAreNotAppliedAgain() {
    // The mirror was written at end LSN 30, after a transaction that revoked ann's role.
    var policy = Self.base()
    policy.apply(.delete(.actorRoles, key: "1"))
    var planner = StreamPlanner(policy: policy, catalog: .init(), mirrorPosition: LSN(30))
    let plan = planner.plan([
      Self.begin(10), .configChange(Self.grant("1", "ann", "player")), Self.commit(20),  // replayed: in the mirror
      Self.begin(40), Self.insert(Self.row("1", "award", "ann")), Self.commit(50),
    ])
    #expect(
      plan.candidates.map(\.decision) == [.denied("event type 'award' denied for actor 'ann': needs role player")])
    #expect(plan.mirrorChanges.isEmpty)
  }

  /// Found by review: after a crash between the mirror's commit and the
  /// slot's acknowledgement, a replayed transaction the mirror holds must
  /// not be judged again (here: a row written before its table was registered).
  @Test func rowsOfTransactionsInTheMirrorAreNotJudgedAgain() {
    var policy = Policy()
    for change in [Self.rule("1", "award", "player"), Self.grant("1", "ann", "player")] { policy.apply(change) }
    policy.apply(Self.source)  // the mirror holds the registration, made at end LSN 20
    var planner = StreamPlanner(policy: policy, catalog: .init(), mirrorPosition: LSN(20))
    let plan = planner.plan([
      Self.begin(10), Self.insert(Self.row("x", "award", "ann")), .configChange(Self.source), Self.commit(20),
      Self.begin(30), Self.insert(Self.row("y", "award", "ann")), Self.commit(40),
    ])
    #expect(plan.candidates.map(\.event.id) == ["y"])
    #expect(plan.registeredSources.isEmpty)
  }

  @Test func dedupeOwnershipIsByteWiseAndOnlyForAllowedEvents() {
    var policy = Self.base()
    policy.apply(Self.grant("2", "jose\u{0301}", "player"))
    policy.apply(Self.grant("3", "jos\u{00E9}", "player"))
    var planner = StreamPlanner(policy: policy, catalog: .init())
    let plan = planner.plan([
      Self.insert(Self.row("1", "award", "mallory", key: "k")),  // denied: owns nothing
      Self.insert(Self.row("2", "award", "jose\u{0301}", key: "k")),
      Self.insert(Self.row("3", "award", "jos\u{00E9}", key: "k")),  // another actor, byte-wise
      Self.insert(Self.row("4", "award", "jose\u{0301}", key: "k")),  // duplicate of 2
      Self.insert(Self.row("5", "award", "ann", key: "k")),  // owned in the ledger already
      Self.insert(Self.row("3", "award", "jos\u{00E9}", key: "k")),  // the same row twice: once
    ])
    let units = plan.units(seen: [], owners: [DedupeKey(type: "award", actor: "ann", key: "k"): "g.actions/0"])
    #expect(units.map(\.event.id) == ["1", "2", "3", "4", "5"])
    #expect(
      units.map(\.work) == [
        .record(.denied, reason: "event type 'award' denied for actor 'mallory': needs role player", ownsKey: true),
        .handle(.sql(function: "g.award")), .handle(.sql(function: "g.award")),
        .record(.duplicate, reason: "dedupe key 'k' already used by event g.actions/2", ownsKey: true),
        .record(.duplicate, reason: "dedupe key 'k' already used by event g.actions/0", ownsKey: true),
      ])
    #expect(plan.ownerSuspects(seen: [LedgerKey(source: "g.actions", id: "2")]).map(\.id) == ["3", "4", "5", "3"])
  }

  @Test func replaysAreDroppedAndHighWaterLimitsLookups() {
    var planner = StreamPlanner(policy: Self.base(), catalog: .init())
    let plan = planner.plan([
      Self.begin(10), Self.insert(Self.row("1", "award", "ann")), Self.commit(20),
      Self.begin(30), Self.insert(Self.row("2", "award", "ann")), Self.commit(40),
    ])
    #expect(plan.replaySuspects(.through(LSN(15))).map(\.id) == ["1"])
    #expect(plan.replaySuspects(.through(LSN(10))).map(\.id) == ["1"], "the high water's own transaction")
    #expect(plan.replaySuspects(.all).map(\.id) == ["1", "2"])
    #expect(plan.replaySuspects(.none).isEmpty)
    #expect(
      planner.plan(rows: [.init(relation: "g.actions", row: Self.row("3", "award", "ann"))]).replaySuspects(.none).map(
        \.id) == ["3"])
    // Outside the window, only what a sealed partition may hold; inside it, nothing twice.
    #expect(plan.sealedSuspects(.through(LSN(15)), mayHold: { _ in true }).map(\.id) == ["2"])
    #expect(plan.sealedSuspects(.none, mayHold: { $0.id == "1" }).map(\.id) == ["1"])
    #expect(plan.sealedSuspects(.all, mayHold: { _ in true }).isEmpty)
    #expect(plan.units(seen: [LedgerKey(source: "g.actions", id: "1")], owners: [:]).map(\.event.id) == ["2"])
  }

  @Test func noHandlerIsDeadAndUnknownTablesAreIgnored() {
    var planner = StreamPlanner(policy: Self.base(), catalog: .init())
    var policy = Self.base()
    policy.apply(Self.rule("2", "later", "anyone"))
    planner = StreamPlanner(policy: policy, catalog: .init())
    let plan = planner.plan([
      Self.insert(Self.row("1", "later", "ann")), .insert(relation: "g.other", row: Row([]), lsn: LSN(1)),
      .ignored(relation: "g.actions", kind: "update"),
    ])
    #expect(plan.ignored == 2)
    #expect(
      plan.units(seen: [], owners: [:]).map(\.work) == [.record(.dead, reason: "no handler for later", ownsKey: true)])
  }
}

@Suite struct BytewiseTests {
  @Test func canonicallyEquivalentTextIsDistinct() {
    #expect("jose\u{0301}" == "jos\u{00E9}", "Swift's own equality, which identities must not use")
    #expect(!"jose\u{0301}".bytewiseEquals("jos\u{00E9}"))
    #expect(Set([Bytewise("jose\u{0301}"), Bytewise("jos\u{00E9}")]).count == 2)
    #expect(Bytewise("abc") == Bytewise("abc"))
    #expect(Optional<String>.none.bytewiseEquals(nil))
    #expect(!Optional("a").bytewiseEquals(nil))
  }

  @Test func grantsAreByteWise() {
    var policy = Policy()
    policy.apply(.upsert(.permissionRules, key: "1", row: ["event_type": "caf\u{00E9}", "role": "r\u{00E9}le"]))
    policy.apply(.upsert(.actorRoles, key: "1", row: ["actor": "jos\u{00E9}", "role": "re\u{0301}le", "scope": nil]))
    policy.apply(.upsert(.actorRoles, key: "2", row: ["actor": "ann", "role": "r\u{00E9}le", "scope": "t\u{00E9}am"]))
    #expect(policy.evaluate(type: "cafe\u{0301}", actor: "ann", scope: "t\u{00E9}am") != .allow, "type")
    #expect(policy.evaluate(type: "caf\u{00E9}", actor: "jos\u{00E9}", scope: nil) != .allow, "role")
    #expect(policy.evaluate(type: "caf\u{00E9}", actor: "ann", scope: "te\u{0301}am") != .allow, "scope")
    #expect(policy.evaluate(type: "caf\u{00E9}", actor: "ann", scope: "t\u{00E9}am") == .allow)
  }
}

@Suite struct EventRecordTests {
  @Test func roundTripsEveryValueKind() {
    let event = Event(
      source: "g.actions", id: "e\u{0301}1", type: "award", actor: "ann", scope: nil, dedupeKey: "k",
      row: Row([
        ("id", .uuid("00000000-0000-4000-8000-000000000001")), ("n", .int(-9_223_372_036_854_775_808)),
        ("f", .float(0.1)), ("d", .numeric("1e400")), ("b", .bool(false)), ("j", .json("{\"xp\": 1}")),
        ("t", .timestamp("2024-05-01T12:00:00.5Z")), ("day", .date("2024-05-01")), ("raw", .bytes([0, 255, 16])),
        ("tags", .array([.text("a"), .null, .array([.int(1)])])), ("none", .null), ("big", .unchangedToast),
        ("name\"quoted", .text("line\nbreak")),
      ]), commitLSN: LSN(0x1_0000_0010), committedAt: 123_456_789, xid: 42)
    let decoded = EventRecord.decode(EventRecord.encode(event))
    #expect(decoded == event)
    #expect(decoded?.id.bytewiseEquals("e\u{0301}1") == true)
    #expect(EventRecord.decode("{}") == nil)
    #expect(EventRecord.decode("not json") == nil)
  }
}
