//! `connector ADDR PORT [COUNT] [IGNORED...]`: COUNT TCP connects (default 1) to
//! ADDR:PORT, results ignored. Its name is on no high-risk list, so it stands for "an ordinary program".

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

fn main() {
    // Lossy: the hostile-input tests run it under a path and with arguments that are not
    // UTF-8 (only the first three arguments mean anything here).
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let usage = "usage: connector ADDR PORT [COUNT]";
    let addr: IpAddr = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let port: u16 = args.get(2).and_then(|p| p.parse().ok()).expect(usage);
    let count: u32 = args
        .get(3)
        .map_or(Some(1), |c| c.parse().ok())
        .expect(usage);
    for _ in 0..count {
        let _ = TcpStream::connect_timeout(&SocketAddr::new(addr, port), Duration::from_secs(2));
    }
    // CONNECTOR_LINGER_MS: stay alive after connecting, so /proc still has the process.
    if let Some(ms) = std::env::var("CONNECTOR_LINGER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
}
