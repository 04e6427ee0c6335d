//! Just enough of a BTF reader to find struct member offsets in the running kernel's
//! `/sys/kernel/btf/vmlinux`, so the fentry/kprobe programs read `struct sock` and
//! `struct task_struct` at this kernel's offsets rather than hard-coded ones.

use anyhow::{Context, Result, bail, ensure};

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset in bits from the start of the enclosing struct.
    bit_offset: u32,
    /// A bitfield: the kernel programs read whole bytes, so such a member is not offered.
    bitfield: bool,
}

#[derive(Debug, Clone)]
struct Type {
    name_off: u32,
    kind: u32,
    members: Vec<Member>,
}

/// Parsed type section: composite types with their members, everything else as a stub.
pub struct Btf {
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
}

impl Btf {
    pub fn parse(data: &[u8]) -> Result<Self> {
        let u16_at = |o: usize| -> Result<u16> {
            let b = data.get(o..o + 2).context("BTF truncated")?;
            Ok(u16::from_le_bytes([b[0], b[1]]))
        };
        let u32_at = |o: usize| -> Result<u32> {
            let b = data.get(o..o + 4).context("BTF truncated")?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        ensure!(u16_at(0)? == BTF_MAGIC, "not little-endian BTF (bad magic)");
        let hdr_len = u32_at(4)? as usize;
        let type_off = u32_at(8)? as usize;
        let type_len = u32_at(12)? as usize;
        let str_off = u32_at(16)? as usize;
        let str_len = u32_at(20)? as usize;
        let types_start = hdr_len
            .checked_add(type_off)
            .context("BTF header overflow")?;
        let types_end = types_start
            .checked_add(type_len)
            .context("BTF header overflow")?;
        let strs_start = hdr_len
            .checked_add(str_off)
            .context("BTF header overflow")?;
        let strs_end = strs_start
            .checked_add(str_len)
            .context("BTF header overflow")?;
        ensure!(
            types_end <= data.len() && strs_end <= data.len(),
            "BTF sections out of bounds"
        );
        let strings = data[strs_start..strs_end].to_vec();

        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            members: Vec::new(),
        }];
        let mut o = types_start;
        while o < types_end {
            let name_off = u32_at(o)?;
            let info = u32_at(o + 4)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            o += 12;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = o + i * 12;
                        let raw = u32_at(m + 8)?;
                        members.push(Member {
                            name_off: u32_at(m)?,
                            type_id: u32_at(m + 4)?,
                            // With kind_flag the high 8 bits hold a bitfield size.
                            bit_offset: if kind_flag { raw & 0x00ff_ffff } else { raw },
                            bitfield: kind_flag && raw >> 24 != 0,
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                0 | 20.. => bail!("unknown BTF kind {kind} at byte {o}"),
                _ => 0,
            };
            o += extra;
            types.push(Type {
                name_off,
                kind,
                members,
            });
        }
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> &str {
        let tail = self.strings.get(off as usize..).unwrap_or_default();
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or("")
    }

    /// Byte offset of `member` inside `struct name`, looking through anonymous
    /// structs and unions (where `skc_daddr` and friends live). None for a bitfield or a
    /// member that does not start on a byte (before 5.6, `sk_protocol` was one).
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let ty = self.types.iter().find(|t| {
            t.kind == KIND_STRUCT && self.name(t.name_off) == name && !t.members.is_empty()
        })?;
        self.find_member(ty, member, 0)
            .filter(|bits| bits % 8 == 0)
            .map(|bits| bits / 8)
    }

    fn find_member(&self, ty: &Type, member: &str, base_bits: u32) -> Option<u32> {
        for m in &ty.members {
            let here = base_bits.checked_add(m.bit_offset)?;
            if m.name_off != 0 && self.name(m.name_off) == member {
                return (!m.bitfield).then_some(here);
            }
            if m.name_off == 0 {
                let inner = self.types.get(m.type_id as usize)?;
                if (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
                    && let Some(found) = self.find_member(inner, member, here)
                {
                    return Some(found);
                }
            }
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a BTF blob: `struct outer { int a; union { int b; int c; }; int d; }`.
    pub fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0";
        let off = |s: &str| -> u32 {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut push = |v: u32| t.extend_from_slice(&v.to_le_bytes());
        // [1] int
        push(off("int"));
        push(KIND_INT << 24);
        push(4);
        push(32);
        // [2] anonymous union { b; c; }
        push(0);
        push((KIND_UNION << 24) | 2);
        push(4);
        for (n, bits) in [("b", 0), ("c", 0)] {
            push(off(n));
            push(1);
            push(bits);
        }
        // [3] struct outer { a @0; <anon union> @32; d @64 }
        push(off("outer"));
        push((KIND_STRUCT << 24) | 3);
        push(12);
        for (name_off, ty, bits) in [(off("a"), 1, 0), (0, 2, 32), (off("d"), 1, 64)] {
            push(name_off);
            push(ty);
            push(bits);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        out.extend_from_slice(&24u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        out.extend_from_slice(&t);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), Some(0));
        assert_eq!(btf.member_offset("outer", "b"), Some(4));
        assert_eq!(btf.member_offset("outer", "c"), Some(4));
        assert_eq!(btf.member_offset("outer", "d"), Some(8));
        assert_eq!(btf.member_offset("outer", "zz"), None);
        assert_eq!(btf.member_offset("missing", "a"), None);
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(Btf::parse(b"\x00\x00").is_err());
        let mut blob = sample();
        blob.truncate(30);
        assert!(Btf::parse(&blob).is_err());
    }

    #[test]
    fn reads_the_running_kernel() {
        let data = match std::fs::read("/sys/kernel/btf/vmlinux") {
            Ok(data) => data,
            Err(e) => {
                crate::testing::skip(
                    "reads_the_running_kernel",
                    &format!("/sys/kernel/btf/vmlinux: {e}"),
                );
                return;
            }
        };
        let btf = Btf::parse(&data).unwrap();
        // skc_daddr is the first word of sock_common on every kernel since 2.6.
        assert_eq!(btf.member_offset("sock_common", "skc_daddr"), Some(0));
        assert!(btf.member_offset("sock_common", "skc_v6_daddr").is_some());
        assert!(btf.member_offset("task_struct", "tgid").is_some());
        // What the BTF tracepoint hooks read (sk_protocol has been a u16 since 5.6).
        assert!(btf.member_offset("sock", "sk_protocol").is_some());
        assert!(btf.member_offset("linux_binprm", "filename").is_some());
    }
}
