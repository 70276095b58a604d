"""Training: training sets from the SSP library, architectures, the train loop and bundle export."""
