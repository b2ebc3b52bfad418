import Foundation
import SluicePostgres
import Testing

/// The `options` every connection sends: the server's keepalives, then the
/// user's own, then the pinned settings, which win where both set one (SPEC
/// section 8).
@Suite struct SessionOptionsTests {
  static let defaults = PGConnection.keepaliveOptions + " " + PGConnection.pinnedOptions

  @Test func theURLsOptionsAreKeptAndThePinsWin() {
    let options = PGConnection.options(
      for: "postgresql://app@db/app?options=-c%20work_mem%3D7777kB%20-c%20synchronous_commit%3Doff")
    #expect(options.hasPrefix(PGConnection.keepaliveOptions + " -c work_mem=7777kB -c synchronous_commit=off  -c "))
    let user = options.range(of: "synchronous_commit=off")
    let pinned = options.range(of: "synchronous_commit=on")
    #expect(user != nil && pinned != nil && user!.lowerBound < pinned!.lowerBound, "the pinned value comes last")
    #expect(
      PGConnection.options(for: "host=db options='-c geqo=off'").hasPrefix(
        PGConnection.keepaliveOptions + " -c geqo=off  -c "))
    #expect(PGConnection.options(for: "postgresql://app@db/app") == Self.defaults)
  }

  /// A trailing backslash escapes the next character: it must not swallow the first pinned option's separator.
  @Test func aTrailingBackslashCannotEatAPinnedOption() {
    let options = PGConnection.options(for: #"host=db options='-c application_name=x\\'"#)
    #expect(options.hasSuffix(#"-c application_name=x\  "# + PGConnection.pinnedOptions), "\(options)")
  }

  @Test func anUnparsableURLGetsTheDefaultsAlone() {
    #expect(PGConnection.options(for: "postgresql://[broken") == Self.defaults)
  }

  /// SPEC 6: the server ends a silent daemon's sessions (and so frees the
  /// slot's lock) within seconds, whatever the server's own keepalives; a
  /// URL's `options` can lengthen them, for a lossy network.
  @Test func theServerGivesASilentPeerSecondsAndAURLCanGiveItMore() throws {
    let db = try TestDatabase("keepalives")
    #expect(URLComponents(string: db.url)?.host == "127.0.0.1", "keepalives apply to TCP sessions only")
    let show =
      "SELECT current_setting('tcp_keepalives_idle'), current_setting('tcp_keepalives_interval'),"
      + " current_setting('tcp_keepalives_count'), current_setting('tcp_user_timeout')"
    #expect(try db.connection.query(show).rows.first == ["2", "1", "3", "5000"])
    let longer = try PGConnection(conninfo: db.url + "?options=-c%20tcp_user_timeout%3D30000")
    defer { longer.close() }
    #expect(try longer.query(show).rows.first == ["2", "1", "3", "30000"])
    #expect(try longer.query("SHOW synchronous_commit").scalar == "on")
  }
}
