/// A five-character SQLSTATE, with the codes Sluice acts on named in one
/// place (as postgres-nio's `PostgresError.Code`).
public struct SQLState: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
  public let rawValue: String
  public init(rawValue: String) { self.rawValue = rawValue }
  public init(_ rawValue: String) { self.rawValue = rawValue }
  public var description: String { rawValue }

  /// `sluice.reject(reason)`: a SQL handler rejects its event.
  public static let sluiceReject = SQLState("SL001")
  public static let uniqueViolation = SQLState("23505")
  public static let insufficientPrivilege = SQLState("42501")
  /// The slot is active for another process (a dying walsender).
  public static let objectInUse = SQLState("55006")
  /// e.g. START_REPLICATION on an invalidated slot.
  public static let objectNotInPrerequisiteState = SQLState("55000")
  public static let undefinedObject = SQLState("42704")
  /// Statement cancelled: the handler timeout, or an operator's pg_cancel_backend.
  public static let queryCanceled = SQLState("57014")
  public static let programLimitExceeded = SQLState("54000")
  public static let tooManyConnections = SQLState("53300")
  /// A prepared statement's plan no longer fits its table (after ALTER TABLE).
  public static let featureNotSupported = SQLState("0A000")
  public static let foreignKeyViolation = SQLState("23503")
  /// A lock wait passed `lock_timeout`.
  public static let lockNotAvailable = SQLState("55P03")

  /// Class 22 (data exception: a value that no longer casts, say).
  public var isDataException: Bool { rawValue.hasPrefix("22") }

  /// Class 08 (connection exception) and 57P (operator intervention:
  /// shutdown, crash, terminated backend): a new connection may succeed.
  public var isConnectionLoss: Bool {
    rawValue.hasPrefix("08") || rawValue.hasPrefix("57P") || self == .tooManyConnections
  }
}
