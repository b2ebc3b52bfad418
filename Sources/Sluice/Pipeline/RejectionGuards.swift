import SluiceCore
import SluicePostgres

/// What the fast path has learned about handlers that reject, so that one
/// rejection does not send every later batch down the careful path.
///
/// A rejection inside a pipeline cannot be undone on its own: a SQL
/// handler's `sluice.reject` aborts the transaction, and a Swift handler
/// that rejects after writing has queued writes. Once a handler has done so
/// (the careful path sees it), its later events are guarded on the fast
/// path: a SQL function is called through a wrapper in `pg_temp` whose
/// exception block turns SQLSTATE SL001 into a returned reason (a
/// subtransaction per call), and a Swift handler's statements get a
/// pipelined savepoint; a batch handler that rejected an event it had
/// emitted for (the fast path sees it) is called event by event, each in a
/// pipelined savepoint. Handlers that never reject pay nothing.
final class RejectionGuards {
  /// SQL function → its wrapper (nil: it could not be created, e.g. no TEMP privilege).
  private var wrappers: [String: String?] = [:]
  private var pending: [String] = []
  private(set) var savepointTypes: Set<Bytewise> = []
  /// Batch handlers that emitted for an event they then rejected: their
  /// runs go event by event on the fast path, each in a pipelined savepoint.
  private(set) var eventByEventTypes: Set<Bytewise> = []
  /// Guards are per handler, so bounded by the configuration; this bounds them anyway.
  static let limit = 256

  func sqlHandlerRejected(function: String) {
    guard wrappers[function] == nil, !pending.contains(function), wrappers.count < Self.limit else { return }
    pending.append(function)
  }

  func swiftHandlerRejectedAfterWriting(type: String) {
    guard savepointTypes.count < Self.limit else { return }
    savepointTypes.insert(Bytewise(type))
  }

  func batchHandlerRejectedAfterEmitting(type: String) {
    guard eventByEventTypes.count < Self.limit else { return }
    eventByEventTypes.insert(Bytewise(type))
  }

  /// Wrappers wait to be created (outside any pipeline).
  var hasPending: Bool { !pending.isEmpty }

  /// The wrapper to call instead of `function`, if it has one.
  func wrapper(for function: String) -> String? { wrappers[function] ?? nil }

  /// Creates the wrappers learned since the last batch (outside any pipeline and transaction).
  func prepare(_ connection: PGConnection) throws {
    for function in pending {
      let name = "sluice_guard_\(wrappers.count + 1)"
      let call = SQLFunctionHandler.quotedFunctionName(function)
      guard !call.contains("$sluice_guard$") else {
        wrappers[function] = .some(nil)
        continue
      }
      do {
        try connection.simpleQuery(
          """
          CREATE FUNCTION pg_temp.\(name)(e jsonb, emit_context text) RETURNS text LANGUAGE plpgsql AS $sluice_guard$
          BEGIN
            PERFORM set_config('sluice.event', emit_context, true);
            PERFORM set_config('sluice.actor', coalesce(e->>'actor', ''), true);
            PERFORM \(call)(e);
            PERFORM set_config('sluice.event', '', true);
            PERFORM set_config('sluice.actor', '', true);
            RETURN NULL;
          EXCEPTION WHEN SQLSTATE 'SL001' THEN
            RETURN SQLERRM;
          END
          $sluice_guard$
          """)
        wrappers[function] = .some("pg_temp.\(name)")
      } catch let error as PostgresError where !error.isConnectionLoss {
        wrappers[function] = .some(nil)
      }
    }
    pending.removeAll()
  }
}
