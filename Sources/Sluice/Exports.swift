@_exported public import Logging
// `import Sluice` is all a handler author needs: events, values, query results.
@_exported public import SluiceCore
@_exported public import SluicePostgres
