import Foundation
import Testing

/// The README and docs/ stay navigable: every relative link names a file
/// that exists, every `#anchor` a heading of the file it points into, and
/// every page of docs/ is linked from the README.
@Suite struct DocsTests {
  static let root = ExamplesTests.repository

  static var pages: [URL] {
    get throws {
      let docs = root.appendingPathComponent("docs")
      let names = try FileManager.default.contentsOfDirectory(atPath: docs.path).filter { $0.hasSuffix(".md") }.sorted()
      return [root.appendingPathComponent("README.md")] + names.map { docs.appendingPathComponent($0) }
    }
  }

  /// Markdown links `[text](target)` outside code blocks and code spans.
  static func links(_ markdown: String) -> [String] {
    var links: [String] = []
    var inFence = false
    for line in markdown.split(separator: "\n", omittingEmptySubsequences: false) {
      if line.trimmingCharacters(in: .whitespaces).hasPrefix("```") {
        inFence.toggle()
        continue
      }
      if inFence { continue }
      // Drop code spans, then find "](" … ")".
      var text = ""
      var inCode = false
      for character in line {
        if character == "`" { inCode.toggle() } else if !inCode { text.append(character) }
      }
      var rest = Substring(text)
      while let open = rest.range(of: "](") {
        let after = rest[open.upperBound...]
        guard let close = after.firstIndex(of: ")") else { break }
        links.append(String(after[..<close]))
        rest = after[after.index(after: close)...]
      }
    }
    return links
  }

  /// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
  static func anchor(_ heading: String) -> String {
    String(
      heading.lowercased().compactMap { character -> Character? in
        if character == " " { return "-" }
        if character.isLetter || character.isNumber || character == "-" || character == "_" { return character }
        return nil
      })
  }

  static func anchors(_ markdown: String) -> Set<String> {
    var inFence = false
    var anchors = Set<String>()
    for line in markdown.split(separator: "\n") {
      if line.hasPrefix("```") { inFence.toggle() }
      guard !inFence, line.hasPrefix("#") else { continue }
      anchors.insert(anchor(String(line.drop { $0 == "#" }.drop { $0 == " " })))
    }
    return anchors
  }

  @Test func everyLinkResolves() throws {
    var checked = 0
    for page in try Self.pages {
      let text = try String(contentsOf: page, encoding: .utf8)
      for link in Self.links(text) where !link.hasPrefix("http://") && !link.hasPrefix("https://") {
        let parts = link.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)
        let path = String(parts[0])
        let target = path.isEmpty ? page : page.deletingLastPathComponent().appendingPathComponent(path).standardized
        #expect(
          FileManager.default.fileExists(atPath: target.path),
          "\(page.lastPathComponent): link \(link) names no file (\(target.path))")
        if parts.count == 2, !target.hasDirectoryPath, target.pathExtension == "md" {
          let anchors = Self.anchors((try? String(contentsOf: target, encoding: .utf8)) ?? "")
          #expect(anchors.contains(String(parts[1])), "\(page.lastPathComponent): link \(link) names no heading")
        }
        checked += 1
      }
    }
    #expect(checked >= 20, "only \(checked) links checked")
  }

  @Test func theReadmeLinksEveryPageAndStaysShort() throws {
    let readme = try String(contentsOf: Self.root.appendingPathComponent("README.md"), encoding: .utf8)
    let linked = Set(Self.links(readme))
    for page in try Self.pages.dropFirst() {
      #expect(
        linked.contains("docs/\(page.lastPathComponent)"), "README.md does not link docs/\(page.lastPathComponent)")
    }
    // The first screen: what Sluice is, the two commands, the flow.
    let lines = readme.split(separator: "\n", omittingEmptySubsequences: false)
    #expect(lines.count < 150, "README.md has \(lines.count) lines: move reference material into docs/")
    let twoCommands = try #require(lines.firstIndex { $0 == "## The two commands" })
    #expect(twoCommands < 45, "the two commands start at line \(twoCommands + 1)")
    #expect(readme.contains("scripts/demo") && readme.contains("scripts/test"))
  }

  @Test func linksAreFoundAndAnchorsAreGitHubs() {
    #expect(Self.links("see [a](docs/a.md) and `[b](x.md)` and [c](#d-e)") == ["docs/a.md", "#d-e"])
    #expect(Self.anchor("`sluice tail`: pg_recvlogical, but readable") == "sluice-tail-pg_recvlogical-but-readable")
    #expect(Self.anchor("Running under systemd (Debian)") == "running-under-systemd-debian")
  }
}
