//! What a webhook receiver is sent: the notification the evaluation makes,
//! the outbox holds, Redis keeps (`persist.rs`) and delivery POSTs
//! (`deliver.rs`). Its own module because all three read it.

use serde::{Deserialize, Serialize};

/// One notification: where it goes and what it says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Notification {
    pub url: String,
    pub body: NotificationBody,
}

/// The JSON a webhook receiver gets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NotificationBody {
    /// `<alert>:<status>:<since_ms>`: the same on every retry of this
    /// notification and after a restart, and never the id of another one.
    pub id: String,
    /// `<alert>:<since_ms of the firing>`: the episode a `firing` opens and
    /// its `resolved` closes.
    pub episode: String,
    pub alert: String,
    /// `firing` or `resolved`.
    pub status: String,
    pub view: String,
    pub measure: String,
    pub comparison: String,
    pub threshold: f64,
    /// The value that fired or resolved the rule (null: no data).
    pub value: Option<f64>,
    pub window: String,
    /// When the comparison started to hold (firing) or the rule fired (resolved), epoch ms.
    pub since_ms: i64,
    /// When the evaluation that made this notification ran, epoch ms.
    pub at_ms: i64,
}
