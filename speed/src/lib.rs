//! # tally-speed: Kafka to Redis counters, effectively-once (not built yet).
