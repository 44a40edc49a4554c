//! # tally-serving: merged query API and dashboard (not built yet).
