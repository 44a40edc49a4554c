//! One cancellation token for the whole process, cancelled by SIGTERM or SIGINT.
//!
//! Every role takes a child of it, so one signal stops them all: each flushes
//! what it holds and returns.

use tokio_util::sync::CancellationToken;
use tracing::info;

/// A token cancelled on the first SIGTERM or SIGINT. The handlers are
/// registered before this returns, not when a task first runs: a signal that
/// arrives while a role is still starting stops it cleanly too.
pub(crate) fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::spawn(async move {
                    tokio::select! {
                        _ = int.recv() => info!("SIGINT: stopping"),
                        _ = term.recv() => info!("SIGTERM: stopping"),
                    }
                    t.cancel();
                });
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    t.cancel();
                });
            }
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        t.cancel();
    });
    token
}
