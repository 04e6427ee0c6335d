//! `storm`: the connect storm `cargo xtask bench` drives. One thread, a loop of socket,
//! blocking connect to a closed port (answered by a RST), close, inside a network
//! namespace the harness made (`--netns /run/netns/NAME`). When done it prints one JSON
//! line: connects made, refused (the expected answer), other errors, seconds, connects/s.
//!
//! ```text
//! storm --netns PATH --dst ADDR [--dst ADDR ...] [--ports FIRST-LAST]
//!       (--seconds S | --count N) [--rate PER_SECOND]
//! ```
//! Connect i goes to `dst[i % dsts]`, port `FIRST + i % (LAST - FIRST + 1)`: one port is
//! a flood, a range is a scan, several destinations mix benign targets. `--rate` paces
//! connects on an absolute schedule (for the latency and loss runs); without it the loop
//! runs flat out. Hand-written on libc: the loop must be the syscalls and nothing else.

use std::{
    ffi::CString,
    net::{IpAddr, Ipv4Addr},
    process::ExitCode,
    time::{Duration, Instant},
};

struct Args {
    netns: Option<String>,
    dsts: Vec<Ipv4Addr>,
    ports: (u16, u16),
    seconds: Option<f64>,
    count: Option<u64>,
    rate: Option<f64>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        netns: None,
        dsts: Vec::new(),
        ports: (4444, 4444),
        seconds: None,
        count: None,
        rate: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--netns" => a.netns = Some(value()?),
            "--dst" => {
                let v = value()?;
                match v.parse::<IpAddr>() {
                    Ok(IpAddr::V4(ip)) => a.dsts.push(ip),
                    _ => return Err(format!("--dst {v}: not an IPv4 address")),
                }
            }
            "--ports" => {
                let v = value()?;
                let (f, l) = v.split_once('-').unwrap_or((&v, &v));
                let f: u16 = f.parse().map_err(|_| format!("--ports {v}: bad port"))?;
                let l: u16 = l.parse().map_err(|_| format!("--ports {v}: bad port"))?;
                if f == 0 || l < f {
                    return Err(format!("--ports {v}: need 1 <= FIRST <= LAST"));
                }
                a.ports = (f, l);
            }
            "--seconds" => {
                let v = value()?;
                a.seconds = Some(
                    v.parse()
                        .ok()
                        .filter(|s: &f64| *s > 0.0)
                        .ok_or(format!("--seconds {v}: not a positive number"))?,
                );
            }
            "--count" => {
                let v = value()?;
                a.count = Some(v.parse().map_err(|_| format!("--count {v}: not a count"))?);
            }
            "--rate" => {
                let v = value()?;
                a.rate = Some(
                    v.parse()
                        .ok()
                        .filter(|r: &f64| *r > 0.0)
                        .ok_or(format!("--rate {v}: not a positive number"))?,
                );
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.dsts.is_empty() {
        return Err("at least one --dst is needed".into());
    }
    if a.seconds.is_none() && a.count.is_none() {
        return Err("--seconds or --count is needed".into());
    }
    Ok(a)
}

fn join_netns(path: &str) -> Result<(), String> {
    let c = CString::new(path).map_err(|_| format!("{path}: NUL in path"))?;
    // SAFETY: plain syscalls on a path we own; the fd is closed right after setns.
    unsafe {
        let fd = libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(format!("open {path}: {}", std::io::Error::last_os_error()));
        }
        let r = libc::setns(fd, libc::CLONE_NEWNET);
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        if r != 0 {
            return Err(format!("setns {path}: {e}"));
        }
    }
    Ok(())
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sleep_until(mono_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (mono_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (mono_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: absolute sleep on a valid timespec; EINTR just returns early.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("storm: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(ns) = &args.netns
        && let Err(e) = join_netns(ns)
    {
        eprintln!("storm: {e}");
        return ExitCode::FAILURE;
    }
    // Paced runs sleep ~100 µs at a time: the default 50 µs timer slack would skew them.
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let addrs: Vec<libc::sockaddr_in> = args
        .dsts
        .iter()
        .map(|ip| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(*ip).to_be(),
            },
            sin_zero: [0; 8],
        })
        .collect();
    let span = u64::from(args.ports.1 - args.ports.0) + 1;
    let limit = args.count.unwrap_or(u64::MAX);
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let interval_ns = args.rate.map(|r| 1e9 / r);
    let start = Instant::now();
    let start_ns = now_ns();
    let (mut made, mut refused, mut errors, mut first_error) = (0u64, 0u64, 0u64, None);
    while made < limit {
        // Checking the clock every 64 connects keeps it out of the loop's cost.
        if made % 64 == 0
            && let Some(d) = deadline
            && Instant::now() >= d
        {
            break;
        }
        if let Some(iv) = interval_ns {
            let due = start_ns + (made as f64 * iv) as u64;
            if now_ns() < due {
                sleep_until(due);
            }
        }
        let mut sa = addrs[(made % addrs.len() as u64) as usize];
        sa.sin_port = (args.ports.0 + (made % span) as u16).to_be();
        // SAFETY: plain socket syscalls on a sockaddr_in we own; the fd is closed below.
        let err = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                Some(std::io::Error::last_os_error())
            } else {
                let r = libc::connect(
                    fd,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                let e = (r != 0).then(std::io::Error::last_os_error);
                libc::close(fd);
                e
            }
        };
        made += 1;
        match err {
            Some(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => refused += 1,
            Some(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            // A listener answered: not what a storm to closed ports expects, but a connect.
            None => {}
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"connects\":{made},\"refused\":{refused},\"errors\":{errors},\"seconds\":{seconds:.6},\"per_second\":{:.1},\"first_error\":{}}}",
        made as f64 / seconds,
        serde_json::Value::from(first_error),
    );
    if errors > 0 && refused == 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
