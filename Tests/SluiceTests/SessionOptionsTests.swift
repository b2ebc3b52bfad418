import Foundation
import SluicePostgres
import Testing

/// The `options` every connection sends: the server's keepalives, then the
/// user's own, then the pinned settings, which win where both set one (SPEC
/// section 8).
@Suite struct SessionOptionsTests {
  static let defaults = PGConnection.ServerSide.sql.options + " " + PGConnection.pinnedOptions

  /// A call on a closed connection fails like a lost connection's. It used
  /// freed memory: a test that closed a connection its database's deinit
  /// then queried corrupted the test process's heap (the realloc crashes).
  @Test func aClosedConnectionFailsInsteadOfUsingFreedMemory() throws {
    let db = try TestDatabase("closed_connection")
    let connection = try PGConnection(conninfo: db.url)
    #expect(try connection.query("SELECT 1").scalar == "1")
    connection.close()
    for _ in 0..<3 {
      #expect(throws: PostgresError.self) {
        try connection.query("SELECT $1::text", [String(repeating: "x", count: 100_000)])
      }
      #expect(throws: PostgresError.self) { try connection.simpleQuery("SELECT 1") }
    }
    let error = connection.lastError("after close")
    #expect(error.message == "the connection is closed" && error.isConnectionLoss)
    #expect(!connection.isHealthy && connection.socket == -1)
    connection.close()
  }

  @Test func theURLsOptionsAreKeptAndThePinsWin() {
    let options = PGConnection.options(
      for: "postgresql://app@db/app?options=-c%20work_mem%3D7777kB%20-c%20synchronous_commit%3Doff")
    #expect(
      options.hasPrefix(PGConnection.ServerSide.sql.options + " -c work_mem=7777kB -c synchronous_commit=off  -c "))
    let user = options.range(of: "synchronous_commit=off")
    let pinned = options.range(of: "synchronous_commit=on")
    #expect(user != nil && pinned != nil && user!.lowerBound < pinned!.lowerBound, "the pinned value comes last")
    #expect(
      PGConnection.options(for: "host=db options='-c geqo=off'").hasPrefix(
        PGConnection.ServerSide.sql.options + " -c geqo=off  -c "))
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
  /// slot's lock and the slot) within seconds, whatever the server's own
  /// settings; a URL's `options` can lengthen them, for a lossy network. The
  /// daemon's stream is timed by the walsender, never by `tcp_user_timeout`,
  /// which would also end a busy daemon's stream (a closed receive window).
  @Test func theServerGivesASilentPeerSecondsAndAURLCanGiveItMore() throws {
    let db = try TestDatabase("keepalives")
    #expect(URLComponents(string: db.url)?.host == "127.0.0.1", "keepalives apply to TCP sessions only")
    let show = ["tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout"]
      .map { "current_setting('\($0)')" }.joined(separator: ", ")
    #expect(try db.connection.query("SELECT \(show)").rows.first == ["2", "1", "3", "5000"])
    let longer = try PGConnection(conninfo: db.url + "?options=-c%20tcp_user_timeout%3D30000")
    defer { longer.close() }
    #expect(try longer.query("SELECT \(show)").rows.first == ["2", "1", "3", "30000"])
    #expect(try longer.query("SHOW synchronous_commit").scalar == "on")

    let stream = try ReplicationConnection(conninfo: db.url, serverSide: .stream)
    defer { stream.close() }
    let tail = try ReplicationConnection(conninfo: db.url)
    defer { tail.close() }
    for (connection, walSenderTimeout) in [(stream.connection, "5s"), (tail.connection, "1min")] {
      #expect(try connection.simpleQuery("SHOW tcp_keepalives_idle").scalar == "2")
      #expect(try connection.simpleQuery("SHOW tcp_user_timeout").scalar == "0")
      #expect(try connection.simpleQuery("SHOW wal_sender_timeout").scalar == walSenderTimeout)
    }
  }
}
