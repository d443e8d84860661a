"""The compare stage: float, isolated and cumulative runs of one model over a data set, and their metrics."""
