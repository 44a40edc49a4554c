//! The dashboard page served at `/`, embedded in the binary at compile time.
//!
//! One self-contained HTML file (no external scripts, fonts or CDNs, no build
//! step): pick a view, a range (presets or custom), a granularity (or auto), a
//! grouping, the charted measure and the refresh period; it follows
//! `/api/v1/views/{view}/stream` (server-sent events) and redraws the totals
//! of every measure, the chart per group and the groups table on every event,
//! and shows the cut, the snapshot's age, the speed layer's part, degraded
//! components, overflow and staleness. Its state is in the URL hash so a wall
//! screen can be bookmarked. The numbers it shows carry the API's raw values in
//! `data-*` attributes (`data-total` per measure card, `data-value` per table
//! cell, `data-cut`/`data-degraded`/`data-updates` on the status bar) so the
//! browser test (`tests/browser.rs`) compares them exactly.

/// The page.
pub(crate) const PAGE: &str = include_str!("../static/dashboard.html");
