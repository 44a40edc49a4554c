//! Process-wide metrics: one Prometheus recorder that every layer's `metrics`
//! calls report to. The serving layer renders it at `/metrics`; a role running
//! alone can expose it on its own listener.

use std::net::SocketAddr;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Install the recorder. With `listen`, also serve `/metrics` there.
pub fn install(listen: Option<&str>) -> anyhow::Result<PrometheusHandle> {
    let builder = PrometheusBuilder::new();
    match listen {
        Some(addr) => {
            let addr: SocketAddr = addr
                .parse()
                .with_context(|| format!("metrics listen address `{addr}`"))?;
            let handle = builder
                .install_recorder()
                .context("install metrics recorder")?;
            let h = handle.clone();
            tokio::spawn(async move {
                if let Ok(listener) = tokio::net::TcpListener::bind(addr).await {
                    loop {
                        let Ok((mut sock, _)) = listener.accept().await else {
                            continue;
                        };
                        let body = h.render();
                        tokio::spawn(async move {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let mut buf = [0u8; 1024];
                            let _ = sock.read(&mut buf).await;
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = sock.write_all(head.as_bytes()).await;
                            let _ = sock.write_all(body.as_bytes()).await;
                        });
                    }
                }
            });
            Ok(handle)
        }
        None => builder
            .install_recorder()
            .context("install metrics recorder"),
    }
}
