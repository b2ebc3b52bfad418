import SluiceCore
import Testing

/// SPEC 8: errors that cannot pass are final after one attempt; only those
/// that may pass are retried.
@Suite struct RetryRuleTests {
  @Test(arguments: [
    // final: the input is at fault
    ("22003", true), ("22P02", true), ("22012", true), ("23505", true), ("23503", true), ("23514", true),
    ("P0001", true), ("42703", true), ("42501", true), ("42883", true),
    // retried: may pass
    ("40001", false), ("40P01", false), ("08006", false), ("08000", false), ("53100", false), ("53300", false),
    ("55P03", false), ("57014", false), ("57P01", false), ("57P02", false), ("57P03", false),
    ("58030", false), ("XX000", false), ("0A000", false),
  ])
  func finalOrRetried(code: String, final: Bool) {
    #expect(RetryRule.isFinal(sqlState: code) == final, "\(code)")
  }

  @Test func anErrorWithoutASQLStateIsRetried() {
    #expect(!RetryRule.isFinal(sqlState: nil))
    #expect(!RetryRule.isFinal(sqlState: "bad"))
  }
}
