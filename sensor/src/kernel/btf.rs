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

/// One member of a struct or union, read from the blob when asked.
struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset in bits from the start of the enclosing struct.
    bit_offset: u32,
    /// A bitfield: the kernel programs read whole bytes, so such a member is not offered.
    bitfield: bool,
}

/// The type section indexed, borrowing the blob: 4 bytes per type (where its record
/// starts) instead of a copy of every struct's members, so reading the layout costs the
/// load path about half a MiB, not a second parse's worth (aya parses it for the loader).
pub struct Btf<'a> {
    data: &'a [u8],
    /// Index = type id; id 0 is `void` (offset 0, never read as a record).
    types: Vec<u32>,
    strings: &'a [u8],
}

fn u32_at(data: &[u8], o: usize) -> Result<u32> {
    let b = data.get(o..o + 4).context("BTF truncated")?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl<'a> Btf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let b = data.get(0..2).context("BTF truncated")?;
        ensure!(
            u16::from_le_bytes([b[0], b[1]]) == BTF_MAGIC,
            "not little-endian BTF (bad magic)"
        );
        let u32_at = |o: usize| u32_at(data, o);
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
        let strings = &data[strs_start..strs_end];

        let mut types = vec![0u32];
        let mut o = types_start;
        while o < types_end {
            let info = u32_at(o + 4)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                0 | 20.. => bail!("unknown BTF kind {kind} at byte {o}"),
                _ => 0,
            };
            types.push(u32::try_from(o).context("BTF larger than 4 GiB")?);
            o += 12 + extra;
            // Members are read later without checks: the whole record must be in the section.
            ensure!(o <= types_end, "BTF truncated in type {}", types.len() - 1);
        }
        types.shrink_to_fit();
        Ok(Self {
            data,
            types,
            strings,
        })
    }

    /// (name_off, kind, vlen, kind_flag) of type `id`; None for void or a bad id.
    fn header(&self, id: usize) -> Option<(u32, u32, usize, bool)> {
        let o = *self.types.get(id).filter(|_| id != 0)? as usize;
        let name_off = u32_at(self.data, o).ok()?;
        let info = u32_at(self.data, o + 4).ok()?;
        Some((
            name_off,
            (info >> 24) & 0x1f,
            (info & 0xffff) as usize,
            info >> 31 == 1,
        ))
    }

    /// The members of struct or union `id` (none for other kinds).
    fn members(&self, id: usize) -> impl Iterator<Item = Member> + '_ {
        let (o, vlen, kind_flag) = match self.header(id) {
            Some((_, KIND_STRUCT | KIND_UNION, vlen, flag)) => {
                (self.types[id] as usize, vlen, flag)
            }
            _ => (0, 0, false),
        };
        (0..vlen).filter_map(move |i| {
            let m = o + 12 + i * 12;
            let raw = u32_at(self.data, m + 8).ok()?;
            Some(Member {
                name_off: u32_at(self.data, m).ok()?,
                type_id: u32_at(self.data, m + 4).ok()?,
                // With kind_flag the high 8 bits hold a bitfield size.
                bit_offset: if kind_flag { raw & 0x00ff_ffff } else { raw },
                bitfield: kind_flag && raw >> 24 != 0,
            })
        })
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
        let id = (1..self.types.len()).find(|&id| {
            self.header(id).is_some_and(|(name_off, kind, vlen, _)| {
                kind == KIND_STRUCT && vlen > 0 && self.name(name_off) == name
            })
        })?;
        self.find_member(id, member, 0)
            .filter(|bits| bits % 8 == 0)
            .map(|bits| bits / 8)
    }

    fn find_member(&self, id: usize, member: &str, base_bits: u32) -> Option<u32> {
        for m in self.members(id) {
            let here = base_bits.checked_add(m.bit_offset)?;
            if m.name_off != 0 && self.name(m.name_off) == member {
                return (!m.bitfield).then_some(here);
            }
            if m.name_off == 0 {
                let inner = m.type_id as usize;
                if matches!(
                    self.header(inner),
                    Some((_, KIND_STRUCT | KIND_UNION, _, _))
                ) && let Some(found) = self.find_member(inner, member, here)
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
        let blob = sample();
        let btf = Btf::parse(&blob).unwrap();
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
