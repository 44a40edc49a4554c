//! The query path: a view query parsed ([`parse`]), planned over the
//! snapshot's roll-up levels ([`plan`]), folded day by day with the speed
//! slices ([`fold`]; `cell_quantiles` adds up a cell's quantile inputs,
//! [`window`] makes rolling windows), ranked and written
//! ([`answer`]), driven by [`execute`] against the serving state.
//!
//! Only [`execute`] reads the serving state; every other piece is a pure
//! function of its inputs, so the state, the answer cache and the alert
//! rules can use the query's types without a loop back to them.

pub mod answer;
mod cell_quantiles;
pub mod execute;
pub mod fold;
pub mod parse;
pub mod plan;
pub mod window;

pub use parse::{parse_time, Col, Limits, Query};
