//! The dashboard page served at `/`, embedded in the binary at compile time.
//!
//! One self-contained HTML file (no external scripts, fonts or CDNs): pick a
//! view, a range, a granularity, a grouping and a measure; it subscribes to
//! `/api/v1/views/{view}/stream` (server-sent events) and redraws an SVG chart
//! and a totals table on every event. The numbers it shows are the API's own
//! values, rendered with `data-*` attributes so a browser test can compare them.

/// The page.
pub const PAGE: &str = include_str!("../static/dashboard.html");
