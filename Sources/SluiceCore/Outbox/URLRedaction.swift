/// Hides an endpoint URL in text a receiver sent back, before the text goes
/// to `last_error` or a log line (SPEC section 9: URLs and secrets never
/// appear in logs or status). Error pages often echo the request (Express:
/// `Cannot POST /hook/<token>`), and a webhook URL often carries its
/// credential in the path (Slack, Discord), the query or the userinfo.
public enum URLRedaction {
  public static let marker = "[url]"
  /// A query value, password or query token shorter than this is not looked
  /// for on its own (it would hide common words); within its pair, its
  /// query and the URL it still is.
  static let shortestFragment = 6
  /// A path segment is looked for on its own from this length: a token, not a word.
  static let shortestSegment = 16
  /// A cut-off answer's tail shorter than this is not taken for the start of a part.
  static let shortestTail = 2

  /// `text` with every occurrence of the URL, its path (when longer than
  /// "/"), its query, its userinfo, and the fragments of those that carry
  /// secrets on their own (query pairs and values, the password, long path
  /// segments) replaced by `marker`; each as written and percent-decoded,
  /// the query also HTML-escaped, ASCII case ignored. `truncated`: the text
  /// is the start of a longer answer, so a tail that begins one of them is
  /// replaced too.
  public static func redact(_ text: String, url: String, truncated: Bool = false) -> String {
    let parts = parts(of: url).map { Array($0.utf8) }
    guard !parts.isEmpty else { return text }
    var input = Array(text.utf8)
    if truncated {
      // A multi-byte character cut in two decodes as U+FFFD.
      let replacement = Array("\u{FFFD}".utf8)
      while input.count >= replacement.count, Array(input.suffix(replacement.count)) == replacement {
        input.removeLast(replacement.count)
      }
    }
    var output: [UInt8] = []
    output.reserveCapacity(input.count)
    var index = 0
    scan: while index < input.count {
      for part in parts where matches(part, input, at: index) {
        output += marker.utf8
        index += part.count
        continue scan
      }
      if truncated, input.count - index >= shortestTail,
        parts.contains(where: {
          input.count - index < $0.count && matches($0[..<(input.count - index)], input, at: index)
        })
      {
        output += marker.utf8
        break
      }
      output.append(input[index])
      index += 1
    }
    return String(decoding: output, as: UTF8.self)
  }

  /// What `redact` looks for, longest first.
  static func parts(of url: String) -> [String] {
    var found: [String] = [url]
    let withoutFragment = String(url.prefix { $0 != "#" })
    found.append(withoutFragment)
    var rest = Substring(withoutFragment)
    if let schemeEnd = rest.firstRange(of: "://") {
      rest = rest[schemeEnd.upperBound...]
      let authority = rest.prefix { $0 != "/" && $0 != "?" }
      rest = rest[authority.endIndex...]
      if let at = authority.lastIndex(of: "@") {
        let userinfo = authority[..<at]
        found.append(String(userinfo))
        if let colon = userinfo.firstIndex(of: ":") {
          let password = userinfo[userinfo.index(after: colon)...]
          if password.count >= shortestFragment { found.append(String(password)) }
        }
      }
    } else {
      return unique(found)
    }
    let path = rest.prefix { $0 != "?" }
    let query = rest.dropFirst(path.count).dropFirst()
    if !query.isEmpty {
      // As written, and as an HTML error page escapes it.
      found += [String(rest), String(rest.replacing("&", with: "&amp;"))]
      found += [String(query), String(query.replacing("&", with: "&amp;"))]
      for pair in query.split(whereSeparator: { $0 == "&" || $0 == ";" }) {
        if let equals = pair.firstIndex(of: "=") {
          let value = pair[pair.index(after: equals)...]
          if !value.isEmpty { found.append(String(pair)) }
          if value.count >= shortestFragment { found.append(String(value)) }
        } else if pair.count >= shortestFragment {
          found.append(String(pair))
        }
      }
    }
    if path.count > 1 {
      found.append(String(path))
      for segment in path.split(separator: "/") where segment.count >= shortestSegment {
        found.append(String(segment))
      }
    }
    return unique(found + found.compactMap(percentDecoded))
  }

  /// Distinct, non-empty, longest first.
  private static func unique(_ parts: [String]) -> [String] {
    var seen: Set<[UInt8]> = []
    var result: [String] = []
    for part in parts where !part.isEmpty {
      let lowered = Array(part.utf8).map(lowercased)
      if seen.insert(lowered).inserted { result.append(part) }
    }
    return result.sorted { $0.utf8.count > $1.utf8.count }
  }

  /// `%2F` → `/`; nil when nothing changes or the bytes are not UTF-8.
  static func percentDecoded(_ text: String) -> String? {
    guard text.contains("%") else { return nil }
    let bytes = Array(text.utf8)
    var decoded: [UInt8] = []
    var index = 0
    while index < bytes.count {
      if bytes[index] == UInt8(ascii: "%"), index + 2 < bytes.count,
        let high = Hex.digit(bytes[index + 1]), let low = Hex.digit(bytes[index + 2])
      {
        decoded.append(high << 4 | low)
        index += 3
      } else {
        decoded.append(bytes[index])
        index += 1
      }
    }
    guard decoded != bytes, let string = String(validating: decoded, as: UTF8.self) else { return nil }
    return string
  }

  private static func lowercased(_ byte: UInt8) -> UInt8 {
    (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) ? byte + 32 : byte
  }

  private static func matches(_ part: some Collection<UInt8>, _ text: [UInt8], at index: Int) -> Bool {
    guard text.count - index >= part.count else { return false }
    var position = index
    for byte in part {
      if lowercased(text[position]) != lowercased(byte) { return false }
      position += 1
    }
    return true
  }
}
