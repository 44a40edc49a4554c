//! # tally-batch: master-dataset archive and Polars recompute (not built yet).
