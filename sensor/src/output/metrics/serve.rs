//! The metrics listener, held to its bounds whoever connects: at most [`MAX_CONNECTIONS`]
//! open at once (a new connection cuts the oldest, so idle connections cannot hold the
//! scraper out, and the fds they cost are bounded), each read for at most
//! [`REQUEST_BYTES`] and served within [`EXCHANGE_TIME`]; a failed accept (EMFILE when
//! the process is out of fds) backs off from [`BACKOFF_MIN`] to [`BACKOFF_MAX`] instead
//! of spinning on a listener that stays readable. All of it is counted.

use std::{collections::VecDeque, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    task::AbortHandle,
};

use super::Metrics;

/// Connections served at once; one more cuts the oldest.
pub const MAX_CONNECTIONS: usize = 32;
/// The request line and headers read at most: only the first line matters.
pub const REQUEST_BYTES: usize = 1024;
/// One exchange, request to response, at most.
pub const EXCHANGE_TIME: Duration = Duration::from_secs(1);
pub const BACKOFF_MIN: Duration = Duration::from_millis(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves on `listener` from a thread of its own until the process exits.
pub fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>) -> Result<SocketAddr> {
    listener
        .set_nonblocking(true)
        .context("metrics listener: non-blocking")?;
    let bound = listener.local_addr().context("metrics listener address")?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    log::error!("metrics endpoint: starting its runtime: {e}");
                    return;
                }
            };
            rt.block_on(accept_loop(listener, metrics));
        })
        .context("starting the metrics thread")?;
    Ok(bound)
}

async fn accept_loop(listener: std::net::TcpListener, metrics: Arc<Metrics>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("metrics endpoint: {e}");
            return;
        }
    };
    let mut open: VecDeque<AbortHandle> = VecDeque::with_capacity(MAX_CONNECTIONS);
    let mut backoff: Option<Duration> = None;
    let mut failed = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if backoff.take().is_some() {
                    log::warn!("metrics endpoint: accepting again after {failed} failed accepts");
                    failed = 0;
                }
                open.retain(|h| !h.is_finished());
                while open.len() >= MAX_CONNECTIONS {
                    if let Some(oldest) = open.pop_front() {
                        oldest.abort();
                        metrics.listener.cut.inc();
                    }
                }
                let m = metrics.clone();
                let task = tokio::spawn(async move {
                    if tokio::time::timeout(EXCHANGE_TIME, answer(stream, &m))
                        .await
                        .is_err()
                    {
                        m.listener.timed_out.inc();
                    }
                });
                open.push_back(task.abort_handle());
                metrics
                    .listener
                    .open
                    .set(i64::try_from(open.len()).unwrap_or(i64::MAX));
                // The new connection is served (its request is usually there already)
                // before the next accept can cut it.
                tokio::task::yield_now().await;
            }
            Err(e) => {
                // The pending connection stays queued and the listener readable: without
                // a pause this would spin.
                metrics.listener.accept_errors.inc();
                failed += 1;
                let wait = backoff.map_or(BACKOFF_MIN, |b| (b * 2).min(BACKOFF_MAX));
                if backoff.is_none() {
                    log::warn!(
                        "metrics endpoint: accept failed: {e}; retrying, backing off up to {BACKOFF_MAX:?}"
                    );
                }
                backoff = Some(wait);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// One request, one response, connection closed. Hand-written because two fixed GET
/// routes do not justify an HTTP framework in a node agent.
async fn answer(mut stream: tokio::net::TcpStream, m: &Metrics) -> std::io::Result<()> {
    let mut buf = [0u8; REQUEST_BYTES];
    let mut n = 0;
    while n < buf.len() {
        let read = stream.read(&mut buf[n..]).await?;
        if read == 0 {
            break;
        }
        n += read;
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let complete = buf[..n].contains(&b'\n');
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, ctype, body) = match (complete, line.starts_with("GET "), path) {
        (false, _, _) => (
            "400 Bad Request",
            "text/plain",
            format!("no request line within {REQUEST_BYTES} bytes\n"),
        ),
        (true, true, "/metrics") => match m.render() {
            Ok(b) => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                b,
            ),
            Err(e) => (
                "500 Internal Server Error",
                "text/plain",
                format!("{e:#}\n"),
            ),
        },
        (true, true, "/healthz") if m.healthy() => ("200 OK", "text/plain", "ok\n".into()),
        (true, true, "/healthz") => (
            "503 Service Unavailable",
            "text/plain",
            "stalled: the ring buffer is not being drained\n".into(),
        ),
        (true, true, _) => ("404 Not Found", "text/plain", "not found\n".into()),
        (true, false, _) => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
