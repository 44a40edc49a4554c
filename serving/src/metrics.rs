//! The Prometheus recorder behind `GET /metrics`.
//!
//! [`handle`] installs the `metrics-exporter-prometheus` recorder as the
//! process's global recorder once and returns its handle. When another part of
//! the process installed a recorder first, serving keeps a private one: the
//! endpoint still answers, with only what serving registered through it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus handle (installed on first use).
pub(crate) fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows serving's own registry only");
            }
            handle
        })
        .clone()
}
