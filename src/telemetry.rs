//! Process-wide metrics: one Prometheus recorder that every layer's `metrics`
//! calls report to. The serving layer renders it at `/metrics`; a role running
//! alone can expose it on its own listener.

use std::net::SocketAddr;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Install the recorder. With `listen`, also serve `/metrics` there; an
/// address that cannot be bound is an error, not a silent absence of metrics.
pub(crate) fn install(listen: Option<&str>) -> anyhow::Result<PrometheusHandle> {
    let listener = match listen {
        Some(addr) => {
            let addr: SocketAddr = addr.parse().with_context(|| {
                format!("metrics listen address `{addr}`: use host:port, like 127.0.0.1:9100")
            })?;
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("bind the metrics listener on {addr}"))?;
            l.set_nonblocking(true).context("metrics listener")?;
            Some(tokio::net::TcpListener::from_std(l).context("metrics listener")?)
        }
        None => None,
    };
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .context("install metrics recorder")?;
    if let Some(listener) = listener {
        tokio::spawn(serve(listener, handle.clone()));
    }
    Ok(handle)
}

/// Answer every connection with the rendered metrics.
async fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let body = handle.render();
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
