import SluiceCLI

// The plain daemon: SQL handlers only (rows of sluice.handlers).
SluiceCLI.main(handlers: [])
