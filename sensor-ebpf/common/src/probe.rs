//! The kernel hooks a connect-layout record can come from, with their names.

/// Which kernel hook produced a connect-layout record (`Connect::probe`, as `u8`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// fentry on `tcp_connect`.
    Fentry = 1,
    /// kprobe on `tcp_connect`.
    Kprobe = 2,
    /// The classic tracepoint `sock/inet_sock_set_state` (needs tracefs).
    Tracepoint = 3,
    /// BTF-typed raw tracepoint (`tp_btf`) on `inet_sock_set_state`: attached by name
    /// through the bpf syscall, no tracefs needed.
    TpBtf = 4,
    /// cgroup sock_addr hooks (`cgroup/connect4`, `connect6`, `sendmsg4`, `sendmsg6`): UDP.
    CgroupSockAddr = 5,
}

impl Probe {
    /// Every hook, in ABI order.
    pub const ALL: [Self; 5] = [
        Self::Fentry,
        Self::Kprobe,
        Self::Tracepoint,
        Self::TpBtf,
        Self::CgroupSockAddr,
    ];

    /// The hook a record's `probe` byte names, if any.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Fentry),
            2 => Some(Self::Kprobe),
            3 => Some(Self::Tracepoint),
            4 => Some(Self::TpBtf),
            5 => Some(Self::CgroupSockAddr),
            _ => None,
        }
    }

    /// The hook as users see it in logs and in `sensor.probe`.
    pub const fn hook(self) -> &'static str {
        match self {
            Self::Fentry => "fentry/tcp_connect",
            Self::Kprobe => "kprobe/tcp_connect",
            Self::TpBtf => "tp_btf/inet_sock_set_state",
            Self::Tracepoint => "tracepoint/sock/inet_sock_set_state",
            Self::CgroupSockAddr => "cgroup/connect4+connect6+sendmsg4+sendmsg6",
        }
    }

    /// The short name (`--probe` takes it for the connect hooks).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::TpBtf => "tp_btf",
            Self::Tracepoint => "tracepoint",
            Self::CgroupSockAddr => "cgroup_sock_addr",
        }
    }
}
