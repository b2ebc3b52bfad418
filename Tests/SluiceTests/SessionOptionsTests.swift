import Foundation
import SluicePostgres
import Testing

/// The `options` every connection sends: the user's own first, then the
/// pinned settings, which win where both set one (SPEC section 8).
@Suite struct SessionOptionsTests {
  @Test func theURLsOptionsAreKeptAndThePinsWin() {
    let options = PGConnection.options(
      for: "postgresql://app@db/app?options=-c%20work_mem%3D7777kB%20-c%20synchronous_commit%3Doff")
    #expect(options.hasPrefix("-c work_mem=7777kB -c synchronous_commit=off  -c "))
    let user = options.range(of: "synchronous_commit=off")
    let pinned = options.range(of: "synchronous_commit=on")
    #expect(user != nil && pinned != nil && user!.lowerBound < pinned!.lowerBound, "the pinned value comes last")
    #expect(PGConnection.options(for: "host=db options='-c geqo=off'").hasPrefix("-c geqo=off  -c "))
    #expect(PGConnection.options(for: "postgresql://app@db/app") == PGConnection.pinnedOptions)
  }

  /// A trailing backslash escapes the next character: it must not swallow the first pinned option's separator.
  @Test func aTrailingBackslashCannotEatAPinnedOption() {
    let options = PGConnection.options(for: #"host=db options='-c application_name=x\\'"#)
    #expect(options.hasPrefix(#"-c application_name=x\  -c datestyle=ISO"#), "\(options)")
  }

  @Test func anUnparsableURLGetsThePinsAlone() {
    #expect(PGConnection.options(for: "postgresql://[broken") == PGConnection.pinnedOptions)
  }
}
