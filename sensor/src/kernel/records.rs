//! Decoding ring-buffer records into typed connections and process events. The bytes come
//! from the kernel, so length and kind are checked before anything is read: the header
//! first (zerocopy), then the record its kind names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, anyhow, bail};
use sensor_common::{AF_INET, AF_INET6, ConnectEvent, ExecEvent, Header, RecordKind, TaskEvent};
use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::kernel::{argv::Argv, probe::Probe};

mod payload;
pub use payload::Payload;

/// `::ffff:a.b.c.d` becomes `a.b.c.d`; everything else is unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What a connect-layout record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flow {
    /// An outbound TCP connect: `dst`/`dport` the peer, `src`/`sport` the local end.
    #[default]
    Connect,
    /// A TCP socket listening: `src`/`sport` the local end; `dst` unspecified, `dport` 0.
    Listen,
    /// A passive open reaching ESTABLISHED: `dst`/`dport` the remote peer, `src`/`sport`
    /// the local (listening) end. The header's task is not the listener's (softirq).
    Inbound,
    /// An outbound UDP datagram (or UDP connect): `dst`/`dport` the peer.
    Udp,
}

impl Flow {
    /// `event.action` of the line.
    pub fn action(self) -> &'static str {
        match self {
            Flow::Connect | Flow::Udp => "network-connect",
            Flow::Listen => "network-listen",
            Flow::Inbound => "network-accept",
        }
    }

    /// The flow an `event.action` names (connect lines are TCP unless said otherwise).
    pub fn from_action(action: &str) -> Option<Self> {
        match action {
            "network-connect" => Some(Flow::Connect),
            "network-listen" => Some(Flow::Listen),
            "network-accept" => Some(Flow::Inbound),
            _ => None,
        }
    }
}

/// One socket event of the connect layout, as the kernel saw it: an outbound TCP connect
/// unless `flow` says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub flow: Flow,
    pub tgid: u32,
    pub tid: u32,
    /// Parent tgid from the kernel; 0 when the layout did not allow reading it.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// CLOCK_BOOTTIME nanoseconds of the connect (the header's `ktime_ns`).
    pub boot_ns: u64,
    /// Task start, boot-based nanoseconds; 0 when unknown.
    pub start_time_ns: u64,
    /// The parent's start, likewise (for `process.parent.entity_id`).
    pub parent_start_time_ns: u64,
    pub cgroup_id: u64,
    pub dst: IpAddr,
    pub dport: u16,
    pub src: IpAddr,
    pub sport: u16,
    pub probe: Option<Probe>,
    /// The task's comm (lossy UTF-8). Renameable by the process: informational only.
    pub comm: String,
    /// The executable the task ran when it made the record, as (device in the userspace
    /// `st_dev` encoding, inode): what the connect is attributed to even if the process
    /// exec'd since. None for inbound records (softirq) and when the kernel could not read it.
    pub image: Option<(u64, u64)>,
    /// The socket's network namespace inode; 0 when unknown, and for UDP.
    pub netns: u32,
}

/// A process-lifecycle record's common part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// CLOCK_BOOTTIME nanoseconds of the record (the header's `ktime_ns`).
    pub boot_ns: u64,
    pub start_time_ns: u64,
    pub parent_start_time_ns: u64,
    pub cgroup_id: u64,
    pub comm: String,
}

/// An execve as the kernel saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub task: Task,
    /// The path given to execve (not resolved; may be relative or `/dev/fd/N`).
    pub filename: String,
    /// argv, when the kernel could read it; the last one may be cut at `ARGS_LEN`.
    pub args: Option<Argv>,
    /// The mapped executable's inode and device (userspace `st_dev` encoding); 0 if unknown.
    pub exe_ino: u64,
    pub exe_dev: u64,
    /// The executable's link count: 0 for memfd and deleted files; None if unknown.
    pub exe_nlink: Option<u32>,
    /// The mapped file's own name (`nc.openbsd` behind `nc`, `memfd:x` for a memfd).
    pub exe_name: String,
}

/// Every record kind the kernel sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Every connect-layout kind: `Connection::flow` says which.
    Connect(Connection),
    Exec(Exec),
    Fork(Task),
    Exit(Task),
    /// The first payload of an outbound TCP flow (protocol on the port).
    Payload(Payload),
}

/// Reads a `T` from the start of `bytes` (any alignment: the ring buffer guarantees only
/// 8 bytes), or says how short the record is.
fn read_record<T: FromBytes + KnownLayout + Immutable>(bytes: &[u8], what: &str) -> Result<T> {
    T::read_from_prefix(bytes).map(|(t, _)| t).map_err(|_| {
        anyhow!(
            "record of {} bytes, shorter than a {what} ({})",
            bytes.len(),
            std::mem::size_of::<T>()
        )
    })
}

fn c_string(bytes: &[u8]) -> String {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}

/// Kernel dev_t (MAJOR << 20 | MINOR) to the userspace encoding `stat` reports.
pub fn user_dev(kernel_dev: u32) -> u64 {
    libc::makedev(kernel_dev >> 20, kernel_dev & 0xf_ffff)
}

/// The one place a record header becomes the task it describes.
fn task(t: &Header) -> Task {
    Task {
        tgid: t.tgid,
        ppid: t.ppid,
        uid: t.uid,
        gid: t.gid,
        boot_ns: t.ktime_ns,
        start_time_ns: t.start_time_ns,
        parent_start_time_ns: t.parent_start_time_ns,
        cgroup_id: t.cgroup_id,
        comm: c_string(&t.comm),
    }
}

pub fn decode(bytes: &[u8]) -> Result<Record> {
    let header: Header = read_record(bytes, "record header")?;
    let Some(kind) = RecordKind::from_u32(header.kind) else {
        bail!(
            "unknown record kind {} ({} bytes)",
            header.kind,
            bytes.len()
        );
    };
    match kind {
        RecordKind::Connect => decode_connect(bytes, Flow::Connect).map(Record::Connect),
        RecordKind::Listen => decode_connect(bytes, Flow::Listen).map(Record::Connect),
        RecordKind::Inbound => decode_connect(bytes, Flow::Inbound).map(Record::Connect),
        RecordKind::Udp => decode_connect(bytes, Flow::Udp).map(Record::Connect),
        RecordKind::Payload => payload::decode(bytes).map(Record::Payload),
        RecordKind::Fork => {
            let ev: TaskEvent = read_record(bytes, "fork record")?;
            Ok(Record::Fork(task(&ev.header)))
        }
        RecordKind::Exit => {
            let ev: TaskEvent = read_record(bytes, "exit record")?;
            Ok(Record::Exit(task(&ev.header)))
        }
        RecordKind::Exec => {
            let ExecEvent { header, data: ev } = read_record(bytes, "exec record")?;
            let flen = (ev.filename_len as usize).min(ev.filename.len());
            let alen = (ev.args_len as usize).min(ev.args.len());
            let args = Argv::parse(&ev.args[..alen]);
            Ok(Record::Exec(Exec {
                task: task(&header),
                filename: c_string(&ev.filename[..flen]),
                args,
                exe_ino: ev.exe_ino,
                exe_dev: if ev.exe_ino == 0 {
                    0
                } else {
                    user_dev(ev.exe_dev)
                },
                exe_nlink: (ev.exe_nlink != u32::MAX).then_some(ev.exe_nlink),
                exe_name: c_string(&ev.exe_name),
            }))
        }
    }
}

/// The (destination, source) addresses of a record's `family`, `daddr` and `saddr`.
fn addresses(family: u16, daddr: &[u8; 16], saddr: &[u8; 16]) -> Result<(IpAddr, IpAddr)> {
    Ok(match family {
        AF_INET => {
            let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
            (v4(daddr), v4(saddr))
        }
        AF_INET6 => (
            IpAddr::V6(Ipv6Addr::from(*daddr)),
            IpAddr::V6(Ipv6Addr::from(*saddr)),
        ),
        other => bail!("unknown address family {other}"),
    })
}

fn decode_connect(bytes: &[u8], flow: Flow) -> Result<Connection> {
    let ConnectEvent {
        header: h,
        data: ev,
    } = read_record(bytes, "connect event")?;
    let ends = addresses(ev.family, &ev.daddr, &ev.saddr)?;
    Ok(Connection {
        probe: Probe::from_u8(ev.probe),
        image: (ev.exe_ino != 0).then(|| (user_dev(ev.exe_dev), ev.exe_ino)),
        netns: ev.netns,
        ..connection(flow, &h, ends, ev.dport, ev.sport)
    })
}

/// A connection from a record's header and its ends (destination, source); no probe,
/// image or namespace (the connect record's own fields, where it has them).
fn connection(
    flow: Flow,
    h: &Header,
    (dst, src): (IpAddr, IpAddr),
    dport: u16,
    sport: u16,
) -> Connection {
    Connection {
        flow,
        tgid: h.tgid,
        tid: h.tid,
        ppid: h.ppid,
        uid: h.uid,
        gid: h.gid,
        boot_ns: h.ktime_ns,
        start_time_ns: h.start_time_ns,
        parent_start_time_ns: h.parent_start_time_ns,
        cgroup_id: h.cgroup_id,
        dst,
        dport,
        src,
        sport,
        probe: None,
        comm: c_string(&h.comm),
        image: None,
        netns: 0,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sensor_common::{Connect, Exec as ExecData, Task as TaskData};

    /// A connect record as the kernel writes it (the header has the kind and the task).
    pub fn raw(family: u16, daddr: [u8; 16], dport: u16) -> ConnectEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        ConnectEvent {
            header: Header {
                kind: RecordKind::Connect as u32,
                tgid: 10,
                tid: 11,
                ppid: 1,
                uid: 1000,
                gid: 1000,
                ktime_ns: 5,
                start_time_ns: 4,
                parent_start_time_ns: 0,
                cgroup_id: 9,
                comm,
            },
            data: Connect {
                family,
                dport,
                sport: 40000,
                probe: Probe::Tracepoint as u8,
                _pad: 0,
                daddr,
                saddr: [0; 16],
                exe_ino: 0,
                exe_dev: 0,
                netns: 0,
            },
        }
    }

    pub fn bytes(ev: &ConnectEvent) -> Vec<u8> {
        as_bytes(ev)
    }

    #[test]
    fn decodes_v4_and_v6() {
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&[203, 0, 113, 7]);
        let c = connect(&bytes(&raw(AF_INET, d, 4444)));
        assert_eq!(c.dst, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(
            (c.dport, c.comm.as_str(), c.probe),
            (4444, "curl", Some(Probe::Tracepoint))
        );
        let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let c = connect(&bytes(&raw(AF_INET6, v6.octets(), 8088)));
        assert_eq!(c.dst, IpAddr::V6(v6));
        assert_eq!(c.flow, Flow::Connect);
        assert_eq!((c.image, c.netns), (None, 0));
    }

    #[test]
    fn carries_the_image_and_namespace() {
        let mut ev = raw(AF_INET, [0; 16], 4444);
        (ev.data.exe_ino, ev.data.exe_dev, ev.data.netns) = (77, (259 << 20) | 3, 4026531840);
        let c = connect(&bytes(&ev));
        assert_eq!(c.image, Some((libc::makedev(259, 3), 77)));
        assert_eq!(c.netns, 4026531840);
    }

    #[test]
    fn listen_inbound_and_udp_share_the_connect_layout() {
        for (kind, flow) in [
            (RecordKind::Listen, Flow::Listen),
            (RecordKind::Inbound, Flow::Inbound),
            (RecordKind::Udp, Flow::Udp),
        ] {
            let mut ev = raw(AF_INET, [0; 16], 0);
            ev.header.kind = kind as u32;
            assert_eq!(connect(&bytes(&ev)).flow, flow);
            assert!(decode(&bytes(&ev)[..120]).is_err(), "{flow:?} truncated");
        }
    }

    #[test]
    fn rejects_bad_records() {
        let good = bytes(&raw(AF_INET, [0; 16], 1));
        assert!(decode(&good[..50]).is_err());
        assert!(decode(&[]).is_err());
        assert!(
            decode(&bytes(&raw(99, [0; 16], 1)))
                .unwrap_err()
                .to_string()
                .contains("family 99")
        );
        let mut bad = raw(AF_INET, [0; 16], 1);
        bad.header.kind = 99;
        assert!(decode(&bytes(&bad)).is_err());
        // comm without a NUL terminator and with invalid UTF-8 is still decoded.
        let mut odd = raw(AF_INET, [0; 16], 1);
        odd.header.comm = [0xff; 16];
        assert_eq!(connect(&bytes(&odd)).comm.chars().count(), 16);
    }

    pub fn connect(b: &[u8]) -> Connection {
        match decode(b).unwrap() {
            Record::Connect(c) => c,
            other => panic!("not a connect: {other:?}"),
        }
    }

    fn as_bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a plain-data ABI struct.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    fn header(kind: RecordKind) -> Header {
        Header {
            kind: kind as u32,
            tgid: 42,
            tid: 42,
            ppid: 7,
            uid: 0,
            gid: 0,
            ktime_ns: 1,
            start_time_ns: 2,
            parent_start_time_ns: 3,
            cgroup_id: 4,
            comm: *b"bash\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    fn task_event(kind: RecordKind) -> TaskEvent {
        TaskEvent {
            header: header(kind),
            data: TaskData {},
        }
    }

    #[test]
    fn decodes_lifecycle_records() {
        let fork = task_event(RecordKind::Fork);
        let Record::Fork(t) = decode(&as_bytes(&fork)).unwrap() else {
            panic!()
        };
        assert_eq!(
            (t.tgid, t.ppid, t.parent_start_time_ns, t.comm.as_str()),
            (42, 7, 3, "bash")
        );
        assert!(matches!(
            decode(&as_bytes(&task_event(RecordKind::Exit))).unwrap(),
            Record::Exit(_)
        ));

        let mut exec = ExecEvent {
            header: header(RecordKind::Exec),
            data: ExecData {
                exe_ino: 1234,
                exe_dev: (8 << 20) | 1,
                exe_nlink: 0,
                filename_len: 9,
                args_len: 13,
                filename: [0; 256],
                args: [0; 512],
                exe_name: [0; 64],
            },
        };
        exec.data.filename[..9].copy_from_slice(b"/bin/curl");
        exec.data.args[..13].copy_from_slice(b"curl\0-s\0x\xffy\0\0");
        let Record::Exec(e) = decode(&as_bytes(&exec)).unwrap() else {
            panic!()
        };
        assert_eq!(e.filename, "/bin/curl");
        assert_eq!(e.args.unwrap(), ["curl", "-s", "x\u{fffd}y", ""]);
        assert_eq!(e.exe_dev, libc::makedev(8, 1));
        assert_eq!(e.exe_nlink, Some(0));
        // Lengths larger than the arrays are clamped, not trusted.
        exec.data.filename_len = 5000;
        exec.data.args_len = 5000;
        assert!(decode(&as_bytes(&exec)).is_ok());
        // A truncated exec record is rejected.
        assert!(decode(&as_bytes(&exec)[..100]).is_err());
        assert!(decode(&as_bytes(&task_event(RecordKind::Fork))[..40]).is_err());
    }
}
