/// An event written down exactly, typed values included, so that it can be
/// run again later as it was (SPEC section 8, "Events do not change"): a
/// dead event's record is what `dlq retry` runs, never the current contents
/// of its source row. Rows are lists of `[name, tag, value]`, not objects,
/// so column names and order survive byte for byte.
public enum EventRecord {
  public static func encode(_ event: Event) -> String {
    var writer = JSONWriter(capacity: 256)
    writer.raw("{")
    writer.key("source")
    writer.string(event.source)
    writer.raw(",")
    writer.key("id")
    writer.string(event.id)
    writer.raw(",")
    writer.key("type")
    writer.string(event.type)
    for (name, value) in [("actor", event.actor), ("scope", event.scope), ("dedupe_key", event.dedupeKey)] {
      guard let value else { continue }
      writer.raw(",")
      writer.key(name)
      writer.string(value)
    }
    if let lsn = event.commitLSN {
      writer.raw(",")
      writer.key("commit_lsn")
      writer.string(lsn.description)
    }
    if let time = event.committedAt {
      writer.raw(",")
      writer.key("committed_at_us")
      writer.string(String(time))
    }
    if event.idIsSynthetic { writer.raw(",\"synthetic_id\":true") }
    if let xid = event.xid {
      writer.raw(",")
      writer.key("xid")
      writer.raw(String(xid))
    }
    writer.raw(",")
    writer.key("row")
    writer.raw("[")
    for (index, (name, value)) in event.row.columns.enumerated() {
      if index > 0 { writer.raw(",") }
      writer.raw("[")
      writer.string(name)
      writer.raw(",")
      tagged(value, &writer)
      writer.raw("]")
    }
    writer.raw("]}")
    return String(decoding: writer.bytes, as: UTF8.self)
  }

  /// The event back, or nil if the record is not one this version wrote.
  public static func decode(_ text: String) -> Event? {
    guard case .object(let object) = JSONValue.parse(text), let source = object["source"]?.string,
      let id = object["id"]?.string, let type = object["type"]?.string, case .array(let columns) = object["row"]
    else { return nil }
    var row: [(String, ColumnValue)] = []
    for column in columns {
      guard case .array(let parts) = column, parts.count == 2, let name = parts[0].string,
        let value = untagged(parts[1])
      else { return nil }
      row.append((name, value))
    }
    var event = Event(
      source: source, id: id, type: type, actor: object["actor"]?.string, scope: object["scope"]?.string,
      dedupeKey: object["dedupe_key"]?.string, row: Row(row),
      commitLSN: object["commit_lsn"]?.string.flatMap { LSN($0) },
      committedAt: object["committed_at_us"]?.string.flatMap { Int64($0) },
      xid: object["xid"]?.integer.flatMap { UInt32(exactly: $0) })
    event.idIsSynthetic = object["synthetic_id"] == .bool(true)
    return event
  }

  /// `["tag", value]`.
  private static func tagged(_ value: ColumnValue, _ writer: inout JSONWriter) {
    func pair(_ tag: String, _ text: String) {
      writer.raw("[")
      writer.string(tag)
      writer.raw(",")
      writer.string(text)
      writer.raw("]")
    }
    switch value {
    case .null: writer.raw("[\"null\"]")
    case .unchangedToast: writer.raw("[\"unchanged_toast\"]")
    case .bool(let flag): writer.raw(flag ? "[\"bool\",true]" : "[\"bool\",false]")
    case .int(let number): pair("int", String(number))
    case .float(let number): pair("float", String(number))
    case .numeric(let text): pair("numeric", text)
    case .text(let text): pair("text", text)
    case .uuid(let text): pair("uuid", text)
    case .json(let text): pair("json", text)
    case .timestamp(let text): pair("timestamp", text)
    case .date(let text): pair("date", text)
    case .bytes(let data): pair("bytes_hex", Hex.encode(data))
    case .array(let items):
      writer.raw("[\"array\",[")
      for (index, item) in items.enumerated() {
        if index > 0 { writer.raw(",") }
        tagged(item, &writer)
      }
      writer.raw("]]")
    }
  }

  private static func untagged(_ json: JSONValue) -> ColumnValue? {
    guard case .array(let parts) = json, let tag = parts.first?.string else { return nil }
    let text = parts.count > 1 ? parts[1].string : nil
    switch tag {
    case "null": return .null
    case "unchanged_toast": return .unchangedToast
    case "bool":
      guard parts.count > 1, case .bool(let flag) = parts[1] else { return nil }
      return .bool(flag)
    case "int": return text.flatMap { Int64($0) }.map { .int($0) }
    case "float": return text.flatMap { Double($0) }.map { .float($0) }
    case "numeric": return text.map { .numeric($0) }
    case "text": return text.map { .text($0) }
    case "uuid": return text.map { .uuid($0) }
    case "json": return text.map { .json($0) }
    case "timestamp": return text.map { .timestamp($0) }
    case "date": return text.map { .date($0) }
    case "bytes_hex": return text.flatMap(Hex.decode).map { .bytes($0) }
    case "array":
      guard parts.count > 1, case .array(let items) = parts[1] else { return nil }
      var values: [ColumnValue] = []
      for item in items {
        guard let value = untagged(item) else { return nil }
        values.append(value)
      }
      return .array(values)
    default: return nil
    }
  }
}
