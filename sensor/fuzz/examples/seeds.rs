//! Writes the `record` corpus's seeds: real records built with the kernel ABI structs,
//! one per kind, as the kernel lays them out. `cargo run --example seeds` in sensor/fuzz.

use std::path::Path;

use sensor_common::{
    ConnectEvent, Connect, Event, Exec, ExecEvent, Header, Probe, RecordKind, Task, TaskEvent,
};

fn bytes<T>(v: &T) -> Vec<u8> {
    // SAFETY: a plain #[repr(C)] ABI struct with explicit padding fields, fully initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn header(kind: RecordKind) -> Header {
    Header {
        kind: kind as u32,
        tgid: 4242,
        tid: 4243,
        ppid: 1,
        uid: 1000,
        gid: 1000,
        ktime_ns: 5_000_000_000,
        start_time_ns: 4_000_000_000,
        parent_start_time_ns: 1_000_000,
        cgroup_id: 9,
        comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
    }
}

fn connect(kind: RecordKind, family: u16, daddr: [u8; 16], dport: u16, probe: Probe) -> ConnectEvent {
    Event {
        header: header(kind),
        data: Connect {
            family,
            dport,
            sport: 40000,
            probe: probe as u8,
            _pad: 0,
            daddr,
            saddr: [0; 16],
            exe_ino: if kind == RecordKind::Inbound { 0 } else { 1234 },
            exe_dev: if kind == RecordKind::Inbound { 0 } else { (8 << 20) | 1 },
            netns: 4026531840,
        },
    }
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/record");
    std::fs::create_dir_all(&dir).unwrap();
    let mut v4 = [0u8; 16];
    v4[..4].copy_from_slice(&[203, 0, 113, 7]);
    let v6: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
    let mapped: std::net::Ipv6Addr = "::ffff:198.51.100.9".parse().unwrap();
    const V4: u16 = libc_af::INET;
    const V6: u16 = libc_af::INET6;
    let mut seeds: Vec<(&str, Vec<u8>)> = vec![
        ("connect-v4", bytes(&connect(RecordKind::Connect, V4, v4, 4444, Probe::TpBtf))),
        ("connect-v6", bytes(&connect(RecordKind::Connect, V6, v6.octets(), 8088, Probe::Tracepoint))),
        ("connect-v4-mapped", bytes(&connect(RecordKind::Connect, V6, mapped.octets(), 9001, Probe::TpBtf))),
        ("listen", bytes(&connect(RecordKind::Listen, V4, [0; 16], 31337, Probe::Tracepoint))),
        ("inbound", bytes(&connect(RecordKind::Inbound, V4, v4, 22, Probe::Tracepoint))),
        ("udp", bytes(&connect(RecordKind::Udp, V4, v4, 53, Probe::CgroupSockAddr))),
        ("fork", bytes(&TaskEvent { header: header(RecordKind::Fork), data: Task {} })),
        ("exit", bytes(&TaskEvent { header: header(RecordKind::Exit), data: Task {} })),
    ];
    let mut exec = ExecEvent {
        header: header(RecordKind::Exec),
        data: Exec {
            exe_ino: 1234,
            exe_dev: (8 << 20) | 1,
            exe_nlink: 1,
            filename_len: 13,
            args_len: 0,
            filename: [0; 256],
            args: [0; 512],
            exe_name: [0; 64],
        },
    };
    exec.data.filename[..13].copy_from_slice(b"/usr/bin/curl");
    let args = b"curl\0-s\0http://203.0.113.7:4444/\0";
    exec.data.args[..args.len()].copy_from_slice(args);
    exec.data.args_len = args.len() as u32;
    exec.data.exe_name[..4].copy_from_slice(b"curl");
    seeds.push(("exec", bytes(&exec)));
    // A fileless process: memfd, no links, argv with invalid UTF-8.
    exec.data.exe_nlink = 0;
    exec.data.exe_name = [0; 64];
    exec.data.exe_name[..10].copy_from_slice(b"memfd:x\xff\n\"");
    let args = b"x\xff\ny\0\"\\\0";
    exec.data.args = [0; 512];
    exec.data.args[..args.len()].copy_from_slice(args);
    exec.data.args_len = args.len() as u32;
    seeds.push(("exec-memfd-hostile", bytes(&exec)));
    for (name, b) in seeds {
        std::fs::write(dir.join(name), b).unwrap();
    }
}

/// Address families (linux/socket.h), without a libc dependency for two numbers.
mod libc_af {
    pub const INET: u16 = 2;
    pub const INET6: u16 = 10;
}
