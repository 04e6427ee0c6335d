//! The kernel hooks by kind: what records say produced them (the ABI's [`Probe`], with its
//! names), and what `--probe` selects among the connect hooks.

pub use sensor_common::Probe;

/// Preference order for `--probe auto`: cheapest and most precise first; the one hook
/// that needs tracefs last.
pub const AUTO_ORDER: [Probe; 4] = [
    Probe::Fentry,
    Probe::Kprobe,
    Probe::TpBtf,
    Probe::Tracepoint,
];

/// `--probe`: `auto` (every hook in [`AUTO_ORDER`]) or one connect hook, named as
/// [`Probe::name`] names it. The cgroup sock_addr hooks see UDP only: no choice here.
// No doc comments on the variants: clap would print them as a list instead of the
// `[possible values: ...]` that `cargo xtask vmtest` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeChoice {
    Auto,
    Fentry,
    Kprobe,
    #[value(name = "tp_btf", alias = "tp-btf")]
    TpBtf,
    Tracepoint,
}

impl ProbeChoice {
    /// The one hook chosen, None for auto.
    pub fn probe(self) -> Option<Probe> {
        match self {
            Self::Auto => None,
            Self::Fentry => Some(Probe::Fentry),
            Self::Kprobe => Some(Probe::Kprobe),
            Self::TpBtf => Some(Probe::TpBtf),
            Self::Tracepoint => Some(Probe::Tracepoint),
        }
    }

    /// The hooks to try, in order.
    pub fn order(self) -> Vec<Probe> {
        self.probe()
            .map_or_else(|| AUTO_ORDER.to_vec(), |p| vec![p])
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    #[test]
    fn abi_values_round_trip() {
        for p in Probe::ALL {
            assert_eq!(Probe::from_u8(p as u8), Some(p));
        }
        assert_eq!(Probe::from_u8(0), None);
        assert_eq!(Probe::from_u8(6), None);
    }

    #[test]
    fn every_choice_is_a_distinct_name() {
        let names: Vec<String> = ProbeChoice::value_variants()
            .iter()
            .map(|c| c.to_possible_value().unwrap().get_name().to_string())
            .collect();
        assert_eq!(names, ["auto", "fentry", "kprobe", "tp_btf", "tracepoint"]);
        assert_eq!(
            ProbeChoice::from_str("tp-btf", false),
            Ok(ProbeChoice::TpBtf)
        );
    }

    /// A choice's `--probe` name is the hook's own short name.
    #[test]
    fn choices_are_named_as_their_hooks() {
        for c in ProbeChoice::value_variants() {
            let name = c.to_possible_value().unwrap().get_name().to_string();
            match c.probe() {
                Some(p) => assert_eq!(name, p.name()),
                None => assert_eq!(name, "auto"),
            }
        }
        assert_eq!(ProbeChoice::Auto.order(), AUTO_ORDER);
    }
}
