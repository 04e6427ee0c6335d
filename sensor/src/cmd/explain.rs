//! `sensor score`: one hypothetical connection through the policy, with every step that
//! decided it (which list matched, which allow rule), so an analyst can see why.

use std::{net::IpAddr, path::PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    detect::{
        policy::Policy,
        score::{MatchedBy, high_risk_entry, score},
        severity::Severity,
        subject::{Subject, parse_time},
    },
    enrich::{
        identity::{Identities, suspicious_location},
        packages::Packages,
        procfs::exe_name,
        users::NameSource,
    },
    output::clock::BootClock,
};

/// `sensor score` arguments.
#[derive(clap::Parser)]
pub struct ScoreArgs {
    /// Executable path (or bare name) of the connecting process.
    #[arg(long)]
    pub exe: String,
    /// Destination address.
    #[arg(long)]
    pub dst: IpAddr,
    /// Destination port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// User name, or a numeric uid.
    #[arg(long)]
    pub user: Option<String>,
    /// Parent executable path.
    #[arg(long)]
    pub parent: Option<String>,
    #[arg(long)]
    pub host: Option<String>,
    #[arg(long)]
    pub container: Option<String>,
    #[arg(long)]
    pub k8s_namespace: Option<String>,
    /// The pod's name, for `pod_names` allow rules.
    #[arg(long)]
    pub pod: Option<String>,
    /// When (RFC 3339), for allow-rule schedules; default now.
    #[arg(long)]
    pub time: Option<String>,
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `sensor score`: prints the verdict and its reason chain for one connection.
pub fn run(a: ScoreArgs) -> Result<()> {
    let policy = Policy::load_or_default(a.config.as_deref())?;
    let ts_ns = match &a.time {
        Some(t) => {
            parse_time(t).with_context(|| format!("--time {t:?} is not an RFC 3339 time"))?
        }
        None => BootClock::now_unix_ns(),
    };
    let (user_id, user_name) = match a.user {
        Some(u) => match u.parse::<u32>() {
            Ok(uid) => (Some(uid), None),
            Err(_) => (None, Some(u)),
        },
        None => (None, None),
    };
    // Same identity tests as the live sensor: is the file a copy of a listed binary (by
    // content, when it exists here), and is its location suspicious?
    let content_match =
        Identities::scan(|n| high_risk_entry(&policy, n), std::path::Path::new("/"))
            .content_match(std::path::Path::new(&a.exe), None);
    let location = suspicious_location(&a.exe, None).map(str::to_string);
    // And is it one no package installed (the host's dpkg lists)?
    let unmanaged = Packages::load(std::path::Path::new("/"))
        .is_managed(&a.exe)
        .map(|m| !m);
    let subject = Subject {
        ts_ns,
        flow: crate::kernel::records::Flow::Connect,
        comm: Some(exe_name(&a.exe).to_string()),
        content_match,
        location,
        unmanaged,
        executable: Some(a.exe),
        pid: None,
        process_start: None,
        parent_executable: a.parent,
        user_id,
        // A what-if: the name is taken as the host's account, the container as the
        // runtime's (live and replayed lines carry what was actually seen).
        user_name_source: user_name.as_ref().map(|_| NameSource::Host),
        user_name,
        dst: a.dst,
        port: a.port,
        host_name: a.host,
        container_trusted: true,
        container_id: a.container,
        kubernetes_namespace: a.k8s_namespace,
        pod_name: a.pod,
        protocol: None,
    };
    let e = explain(&policy, &subject);
    if a.json {
        println!(
            "{}",
            serde_json::to_value(&e).context("writing the explanation as JSON")?
        );
    } else {
        print!("{}", render(&e));
    }
    Ok(())
}

/// One check of the chain.
#[derive(Debug, Serialize)]
pub struct Step {
    pub check: &'static str,
    pub matched: bool,
    pub detail: String,
}

/// The verdict and its reason chain (`--json` prints it as is).
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub verdict: &'static str,
    pub risk_score: u8,
    pub severity: Option<Severity>,
    pub list_risk_score: u8,
    pub allow_rule: Option<String>,
    pub steps: Vec<Step>,
    pub note: &'static str,
}

/// Scores `obs` and says why, step by step.
pub fn explain(policy: &Policy, obs: &Subject) -> Explanation {
    let v = score(policy, obs);
    let allow = policy.allow_rule(obs);
    let mut steps = Vec::new();
    let mut step = |check: &'static str, matched: bool, detail: String| {
        steps.push(Step {
            check,
            matched,
            detail,
        });
    };
    let dst = obs.dst.to_string();
    match v.excluded_by {
        Some(net) => step(
            "excluded_networks",
            true,
            format!("{dst} is in {net}: excluded destinations score 0"),
        ),
        None => step(
            "excluded_networks",
            false,
            format!("{dst} is in no excluded network"),
        ),
    }
    let who = match (&obs.executable, &obs.comm) {
        (Some(e), _) => format!("executable {e} (name {})", exe_name(e)),
        (None, Some(c)) => format!("comm {c} (executable unknown)"),
        (None, None) => "unknown process".into(),
    };
    match &v.high_risk {
        Some(h) => step(
            "high_risk_executables",
            true,
            match h.matched_by {
                MatchedBy::Executable => format!("{who} matches list entry {:?}", h.entry),
                MatchedBy::Content => {
                    format!("{who} is a copy of list entry {:?} (by content)", h.entry)
                }
                MatchedBy::Location => format!("{who} runs from a suspicious location {}", h.entry),
                MatchedBy::Comm => format!("{who}: comm matches list entry {:?}", h.entry),
            },
        ),
        None => step(
            "high_risk_executables",
            false,
            format!("{who} is on no list entry"),
        ),
    }
    let port = obs.port;
    step(
        "c2_ports",
        v.known_c2_port,
        format!(
            "port {port} {} a known C2 port",
            if v.known_c2_port { "is" } else { "is not" }
        ),
    );
    step(
        "standard_ports",
        v.non_standard_port,
        if policy.standard_ports.contains(&port) {
            format!("port {port} is a standard port")
        } else if port <= 1024 {
            format!("port {port} is not above 1024, so not non-standard")
        } else {
            format!("port {port} is not a standard port and is above 1024: non-standard")
        },
    );
    let tier = match (v.excluded_by.is_some(), v.risk) {
        (true, _) => "excluded destination: risk 0".to_string(),
        (_, r) if v.unmanaged => format!(
            "unmanaged executable (no package installed it, under no trusted path) and known C2 port: risk {r} ([unmanaged])"
        ),
        (_, 3) => "high-risk process and known C2 port: risk 3".into(),
        (_, 2) => "high-risk process on a non-standard port: risk 2".into(),
        (_, 1) => "known C2 port, process not high-risk: risk 1".into(),
        _ => "no tier applies: risk 0".into(),
    };
    step("tier", v.risk > 0, tier);
    let suppressed = allow.is_some() && v.risk > 0;
    match allow {
        Some(rule) => step(
            "allow",
            true,
            format!(
                "allow rule {:?} matches ({}){}{}",
                rule.name,
                rule.describe(),
                rule.reason
                    .as_deref()
                    .map(|r| format!(", reason: {r}"))
                    .unwrap_or_default(),
                if suppressed {
                    ": alert suppressed (counted per rule)"
                } else {
                    ""
                }
            ),
        ),
        None => step(
            "allow",
            false,
            format!("none of the {} allow rules matches", policy.allow.len()),
        ),
    }
    let risk = if suppressed { 0 } else { v.risk };
    Explanation {
        verdict: if suppressed {
            "suppressed"
        } else if risk > 0 {
            "alert"
        } else {
            "no alert"
        },
        risk_score: risk,
        severity: Severity::of(risk),
        list_risk_score: v.risk,
        allow_rule: allow.filter(|_| suppressed).map(|r| r.name.clone()),
        steps,
        note: "beacon detection needs a series of connections: see `sensor replay`",
    }
}

/// The same, for people.
pub fn render(e: &Explanation) -> String {
    let mut out = format!(
        "verdict: {} (risk {}{})\n",
        e.verdict,
        e.risk_score,
        e.severity.map(|s| format!(", {s}")).unwrap_or_default()
    );
    if let Some(rule) = &e.allow_rule {
        out.push_str(&format!(
            "suppressed by allow rule {rule:?}; without it: risk {}\n",
            e.list_risk_score
        ));
    }
    for (i, s) in e.steps.iter().enumerate() {
        out.push_str(&format!(
            "  {}. [{}] {}: {}\n",
            i + 1,
            if s.matched { "x" } else { " " },
            s.check,
            s.detail
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn obs(exe: &str, dst: &str, port: u16) -> Subject {
        Subject {
            ts_ns: 1_800_000_000_000_000_000,
            comm: None,
            ..Subject::named(Some(exe), "").to(dst.parse().unwrap(), port)
        }
    }

    /// The explanation and its JSON form (`--json`).
    fn explained(p: &Policy, s: &Subject) -> (Explanation, Value) {
        let e = explain(p, s);
        let j = json!(e);
        (e, j)
    }

    #[test]
    fn chain_names_the_lists_and_the_rule() {
        let p = Policy::default();
        let (e, d) = explained(&p, &obs("/usr/bin/curl", "203.0.113.7", 8088));
        assert_eq!(d["verdict"], "alert");
        assert_eq!(d["risk_score"], 3);
        assert_eq!(d["severity"], "High");
        let text = render(&e);
        assert!(
            text.contains("[x] high_risk_executables") && text.contains("\"curl\""),
            "{text}"
        );
        assert!(
            text.contains("[x] c2_ports: port 8088 is a known C2 port"),
            "{text}"
        );
        assert!(text.contains("none of the 0 allow rules"), "{text}");

        let p = Policy::parse(
            "[[allow]]\nname = \"dev\"\nreason = \"local dev server\"\nexecutables = [\"curl\"]\ndestination_ports = [8088]\n",
        )
        .unwrap();
        let (e, d) = explained(&p, &obs("/usr/bin/curl", "203.0.113.7", 8088));
        assert_eq!(d["verdict"], "suppressed");
        assert_eq!(d["risk_score"], 0);
        assert_eq!(d["list_risk_score"], 3);
        assert_eq!(d["allow_rule"], "dev");
        let text = render(&e);
        assert!(text.contains("allow rule \"dev\" matches (executable curl and port 8088), reason: local dev server"), "{text}");

        let (e, d) = explained(&p, &obs("/usr/bin/curl", "10.1.1.1", 8088));
        assert_eq!(d["verdict"], "no alert");
        assert!(render(&e).contains("10.1.1.1 is in 10.0.0.0/8"));
        assert!(
            d["allow_rule"].is_null(),
            "a rule on a non-alert suppresses nothing"
        );
        let (e, _) = explained(&p, &obs("/usr/sbin/nginx", "203.0.113.7", 5555));
        assert!(render(&e).contains("no tier applies"));
    }
}
