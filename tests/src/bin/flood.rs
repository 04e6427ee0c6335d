//! `flood MODE --seconds S`: one kind of record at full speed, for the flood tests.
//!
//! - `udp DST`: a UDP port sweep from one socket to DST, ports 1-65535 over and over
//!   (each (socket, port) is a new destination for the kernel's UDP hook).
//! - `accept`: a loopback listener and a client connecting to it in a loop: an inbound
//!   record per accepted connection (loopback connects are filtered in the kernel).
//! - `exec PROGRAM`: fork and exec PROGRAM (no arguments), wait, again.
//!
//! Prints `ready` after its first 1,000 rounds, so the test knows the flood is on.
//! Hand-written on libc: the loop must be the syscalls and nothing else.

use std::{
    ffi::CString,
    io::Write,
    time::{Duration, Instant},
};

fn usage() -> ! {
    eprintln!("usage: flood (udp DST | accept | exec PROGRAM) --seconds S");
    std::process::exit(2)
}

fn sockaddr(ip: std::net::Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

const SA_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().cloned().unwrap_or_else(|| usage());
    let seconds: f64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage());
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut round: u64 = 0;
    let tick = |round: u64| {
        if round == 1000 {
            println!("ready");
            let _ = std::io::stdout().flush();
        }
        !round.is_multiple_of(256) || Instant::now() < deadline
    };
    // SAFETY (every block below): plain syscalls on fds and structs this program owns.
    match mode.as_str() {
        "udp" => {
            let dst: std::net::Ipv4Addr = args
                .get(1)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| usage());
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let byte = [0u8; 1];
            loop {
                round += 1;
                if !tick(round) {
                    break;
                }
                let sa = sockaddr(dst, (round % 65535 + 1) as u16);
                unsafe {
                    libc::sendto(
                        fd,
                        byte.as_ptr().cast(),
                        1,
                        libc::MSG_DONTWAIT,
                        (&sa as *const libc::sockaddr_in).cast(),
                        SA_LEN,
                    )
                };
            }
        }
        "accept" => {
            let lo = std::net::Ipv4Addr::LOCALHOST;
            let l = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let one: libc::c_int = 1;
            let mut sa = sockaddr(lo, 0);
            let mut len = SA_LEN;
            unsafe {
                libc::setsockopt(
                    l,
                    libc::SOL_SOCKET,
                    libc::SO_REUSEADDR,
                    (&one as *const libc::c_int).cast(),
                    4,
                );
                assert_eq!(
                    libc::bind(l, (&sa as *const libc::sockaddr_in).cast(), SA_LEN),
                    0
                );
                assert_eq!(libc::listen(l, 1024), 0);
                libc::getsockname(l, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len);
            }
            // Linger 0: the client's close is a reset, so ports never run out.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            loop {
                round += 1;
                if !tick(round) {
                    break;
                }
                unsafe {
                    let c = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                    libc::setsockopt(
                        c,
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&linger as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                    if libc::connect(c, (&sa as *const libc::sockaddr_in).cast(), SA_LEN) == 0 {
                        let a = libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut());
                        // The client resets first: no TIME_WAIT on either side.
                        libc::close(c);
                        if a >= 0 {
                            libc::close(a);
                        }
                    } else {
                        libc::close(c);
                    }
                }
            }
        }
        "exec" => {
            let prog = CString::new(args.get(1).cloned().unwrap_or_else(|| usage()))
                .unwrap_or_else(|_| usage());
            let argv = [prog.as_ptr(), std::ptr::null()];
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            loop {
                round += 1;
                if !tick(round) {
                    break;
                }
                unsafe {
                    let pid = libc::fork();
                    if pid == 0 {
                        libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr());
                        libc::_exit(127);
                    }
                    if pid > 0 {
                        libc::waitpid(pid, std::ptr::null_mut(), 0);
                    }
                }
            }
        }
        _ => usage(),
    }
}
