import SluiceCLI
import SluiceExamples

// `sluice` plus the examples' Swift handlers. A daemon of your own is the
// same two lines with your handlers in the list.
SluiceCLI.main(handlers: ExampleHandlers.all)
