/// The daemon's configuration tables as of one position in the WAL:
/// sources, permission rules, actor roles, SQL handlers. It changes only by
/// `apply`, in stream order, so every event is judged by the state committed
/// before it (and by changes earlier in its own transaction).
public struct Policy: Sendable, Equatable {
  public enum Table: String, Sendable, CaseIterable {
    case sources, permissionRules = "permission_rules", actorRoles = "actor_roles", handlers
    case actorKeys = "actor_keys"
    /// `sluice.<table>`, as the stream names it.
    public var relation: String { "sluice." + rawValue }
    /// The primary key columns.
    public var keyColumns: [String] {
      switch self {
      case .sources: ["relation"]
      case .permissionRules, .actorRoles: ["id"]
      case .handlers: ["event_type"]
      case .actorKeys: ["actor", "key_id"]
      }
    }
    /// A row's key, as one text: the primary key's value, or for a key of
    /// two columns the first's UTF-8 length, ':', then both (unambiguous).
    /// `keySQL` computes the same in SQL.
    public func key(_ column: (String) -> String?) -> String? {
      let values = keyColumns.map(column)
      guard let first = values.first ?? nil else { return nil }
      guard values.count == 2 else { return first }
      guard let second = values[1] else { return nil }
      return "\(first.utf8.count):\(first)\(second)"
    }
    /// `key` in SQL, for rows of the table aliased `alias`.
    public func keySQL(_ alias: String) -> String {
      let columns = keyColumns.map { "\(alias).\($0)::text" }
      guard columns.count == 2 else { return columns[0] }
      return "octet_length(\(columns[0]))::text || ':' || \(columns[0]) || \(columns[1])"
    }
    public init?(relation: String) {
      guard relation.hasPrefix("sluice.") else { return nil }
      self.init(rawValue: String(relation.dropFirst(7)))
    }
  }

  /// A row change of one configuration table, with text values.
  public enum Change: Sendable, Equatable {
    case upsert(Table, key: String, row: [String: String?])
    case delete(Table, key: String)
    case truncate(Table)
  }

  public struct Rule: Sendable, Equatable {
    public var eventType: String
    public var role: String
  }

  public struct Grant: Sendable, Equatable {
    public var actor: String
    public var role: String
    public var scope: String?
  }

  /// Keyed byte-wise (see `Bytewise`): configuration values are compared as Postgres compares them.
  public private(set) var sources: [Bytewise: SourceMapping] = [:]
  public private(set) var rules: [Bytewise: Rule] = [:]
  public private(set) var grants: [Bytewise: Grant] = [:]
  /// actor → grant ids, so evaluation does not scan every grant.
  private var grantsByActor: [Bytewise: Set<Bytewise>] = [:]
  /// event type ('*' included) → rule id → role: what `evaluate` needs, without scanning every rule.
  private var rulesByType: [Bytewise: [Bytewise: Bytewise]] = [:]
  /// A row of `sluice.handlers`: a SQL function, or "send the event to this endpoint" (`sluice.add_webhook`).
  public enum SQLHandler: Sendable, Equatable {
    case function(String)
    case webhook(endpoint: String)

    /// From a row's `function` and `endpoint` columns (exactly one is set).
    public init?(function: String?, endpoint: String?) {
      if let function {
        self = .function(function)
      } else if let endpoint {
        self = .webhook(endpoint: endpoint)
      } else {
        return nil
      }
    }
  }

  /// event type → SQL handler (`sluice.handlers`).
  public private(set) var handlers: [Bytewise: SQLHandler] = [:]
  /// `sluice.actor_keys` by row key; `keyHolders`: key id → actor → row key.
  public private(set) var actorKeys: [Bytewise: ActorKey] = [:]
  private var keyHolders: [Bytewise: [Bytewise: Bytewise]] = [:]

  public init() {}

  /// The mapping of a source table (`schema.table`), if it is one.
  public func source(_ relation: String) -> SourceMapping? { sources[Bytewise(relation)] }

  /// The SQL handler registered for an event type.
  public func sqlHandler(for type: String) -> SQLHandler? { handlers[Bytewise(type)] }

  /// True when a rule names the type itself (not '*') or a SQL handler is
  /// registered for it: such types are the configuration's, not a client's.
  public func namesType(_ type: String) -> Bool {
    let key = Bytewise(type)
    return handlers[key] != nil || rulesByType[key] != nil
  }

  public mutating func apply(_ change: Change) {
    switch change {
    case .truncate(let table):
      switch table {
      case .sources: sources.removeAll()
      case .permissionRules:
        rules.removeAll()
        rulesByType.removeAll()
      case .actorRoles:
        grants.removeAll()
        grantsByActor.removeAll()
      case .handlers: handlers.removeAll()
      case .actorKeys:
        actorKeys.removeAll()
        keyHolders.removeAll()
      }
    case .delete(let table, let key):
      remove(table, Bytewise(key))
    case .upsert(let table, let key, let row):
      let key = Bytewise(key)
      remove(table, key)
      func text(_ column: String) -> String? { row[column] ?? nil }
      switch table {
      case .sources:
        guard let actor = text("actor_column") else { return }
        // A mirror row from before SPEC 13's migration has no actor_from: those sources kept 'column'.
        guard
          let proof = ActorProof(
            actorFrom: text("actor_from"), signature: text("signature_column"), key: text("key_column"),
            payload: text("payload_column"))
        else { return }
        sources[key] = SourceMapping(
          relation: key.text, eventTypeColumn: text("event_type_column"), eventType: text("event_type"),
          idColumn: text("id_column") ?? "id", actorColumn: actor, dedupeColumn: text("dedupe_column"),
          scopeColumn: text("scope_column"), actorFrom: proof, trustsExisting: text("existing") == "trust")
      case .permissionRules:
        guard let type = text("event_type"), let role = text("role") else { return }
        rules[key] = Rule(eventType: type, role: role)
        rulesByType[Bytewise(type), default: [:]][key] = Bytewise(role)
      case .actorRoles:
        guard let actor = text("actor"), let role = text("role") else { return }
        grants[key] = Grant(actor: actor, role: role, scope: text("scope"))
        grantsByActor[Bytewise(actor), default: []].insert(key)
      case .handlers:
        handlers[key] = SQLHandler(function: text("function"), endpoint: text("endpoint"))
      case .actorKeys:
        guard let actor = text("actor"), let keyID = text("key_id") else { return }
        // bytea as text: `\x` and hex (the daemon's sessions pin bytea_output = hex).
        let hex = text("public_key").map { $0.hasPrefix("\\x") ? String($0.dropFirst(2)) : $0 }
        actorKeys[key] = ActorKey(actor: actor, keyID: keyID, publicKey: hex.flatMap(Hex.decode))
        keyHolders[Bytewise(keyID), default: [:]][Bytewise(actor)] = key
      }
    }
  }

  /// The key `keyID` of `actor`, if registered.
  public func actorKey(actor: String, keyID: String) -> ActorKey? {
    keyHolders[Bytewise(keyID)]?[Bytewise(actor)].flatMap { actorKeys[$0] }
  }

  /// Whether `keyID` is registered, but only for actors other than `actor`.
  public func keyBelongsToOthers(actor: String, keyID: String) -> Bool {
    guard let holders = keyHolders[Bytewise(keyID)] else { return false }
    return holders[Bytewise(actor)] == nil && !holders.isEmpty
  }

  private mutating func remove(_ table: Table, _ key: Bytewise) {
    switch table {
    case .sources: sources[key] = nil
    case .permissionRules:
      if let old = rules.removeValue(forKey: key) {
        let type = Bytewise(old.eventType)
        rulesByType[type]?[key] = nil
        if rulesByType[type]?.isEmpty == true { rulesByType[type] = nil }
      }
    case .actorRoles:
      if let old = grants.removeValue(forKey: key) {
        let actor = Bytewise(old.actor)
        grantsByActor[actor]?.remove(key)
        if grantsByActor[actor]?.isEmpty == true { grantsByActor[actor] = nil }
      }
    case .handlers: handlers[key] = nil
    case .actorKeys:
      if let old = actorKeys.removeValue(forKey: key) {
        let keyID = Bytewise(old.keyID)
        keyHolders[keyID]?[Bytewise(old.actor)] = nil
        if keyHolders[keyID]?.isEmpty == true { keyHolders[keyID] = nil }
      }
    }
  }

  /// Deny by default. Allowed iff a rule for the type (or '*') names the
  /// role 'anyone', or a role the actor holds globally or in the event's
  /// scope. Every comparison is byte-wise.
  public func evaluate(type: String, actor: String?, scope: String?) -> Verdict {
    guard let actor, !actor.isEmpty else {
      return .deny("event type '\(type)' denied: the actor is empty")
    }
    let exact = rulesByType[Bytewise(type)]
    let wildcard = type == "*" ? nil : rulesByType[Bytewise("*")]
    if exact == nil && wildcard == nil {
      return .deny("event type '\(type)' denied for actor '\(actor)': no permission rule allows this type")
    }
    func allows(_ role: Bytewise) -> Bool {
      exact?.values.contains(role) == true || wildcard?.values.contains(role) == true
    }
    if allows(Self.anyone) { return .allow }
    for id in grantsByActor[Bytewise(actor)] ?? [] {
      guard let grant = grants[id], allows(Bytewise(grant.role)) else { continue }
      if grant.scope == nil || grant.scope.bytewiseEquals(scope) { return .allow }
    }
    let roles = Set((exact?.values.map(\.text) ?? []) + (wildcard?.values.map(\.text) ?? []))
    let needed = roles.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }.joined(separator: ", ")
    let scoped = scope.map { " in scope '\($0)'" } ?? ""
    return .deny("event type '\(type)' denied for actor '\(actor)': needs role \(needed)\(scoped)")
  }

  private static let anyone = Bytewise("anyone")

  public func evaluate(_ event: Event) -> Verdict {
    evaluate(type: event.type, actor: event.actor, scope: event.scope)
  }
}

public enum Verdict: Sendable, Equatable {
  case allow
  case deny(String)
}
