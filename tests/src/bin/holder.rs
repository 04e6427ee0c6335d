//! `holder ADDR PORT [IGNORED...]`: one TCP connect to ADDR:PORT at start, one more per
//! line read on stdin, exit at end of stdin. The hostile-load test gives it a huge argv
//! and keeps hundreds alive; closing their stdin ends them all, even if the test dies.

use std::{
    io::BufRead,
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

fn main() {
    // Only the first two arguments mean anything; the rest is the load (never collected).
    let mut args = std::env::args_os().skip(1);
    let usage = "usage: holder ADDR PORT";
    let addr: IpAddr = args
        .next()
        .and_then(|a| a.to_str()?.parse().ok())
        .expect(usage);
    let port: u16 = args
        .next()
        .and_then(|p| p.to_str()?.parse().ok())
        .expect(usage);
    let to = SocketAddr::new(addr, port);
    let connect = || drop(TcpStream::connect_timeout(&to, Duration::from_secs(2)));
    connect();
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        connect();
    }
}
