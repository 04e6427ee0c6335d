//! `sensor score`: one hypothetical connection through the policy, with every step that
//! decided it (which list matched, which allow rule), so an analyst can see why.

use std::{net::IpAddr, path::PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::detect::score::MatchedBy;
use crate::{
    detect::engine::{Obs, list_verdict},
    detect::policy::Policy,
    enrich::procfs::exe_name,
    output::severity,
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
    let policy = crate::detect::policy::Policy::load_or_default(a.config.as_deref())?;
    let ts_ns = match &a.time {
        Some(t) => crate::output::clock::parse_rfc3339(t)
            .with_context(|| format!("--time {t:?} is not an RFC 3339 time"))?,
        None => crate::output::clock::BootClock::now_unix_ns(),
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
        crate::enrich::identity::Identities::scan(&policy, std::path::Path::new("/"))
            .content_match(std::path::Path::new(&a.exe), None);
    let location = crate::enrich::identity::suspicious_location(&a.exe, None).map(str::to_string);
    let obs = Obs {
        ts_ns,
        comm: Some(exe_name(&a.exe).to_string()),
        content_match,
        location,
        executable: Some(a.exe),
        pid: None,
        parent_executable: a.parent,
        user_id,
        user_name,
        dst: Some(a.dst),
        port: a.port,
        host_name: a.host,
        container_id: a.container,
        kubernetes_namespace: a.k8s_namespace,
    };
    let doc = explain(&policy, &obs);
    if a.json {
        println!("{doc}");
    } else {
        print!("{}", render(&doc));
    }
    Ok(())
}

/// The verdict and its reason chain, as JSON (`--json` prints it as is).
pub fn explain(policy: &Policy, obs: &Obs) -> Value {
    let v = list_verdict(policy, obs);
    let allow = policy.allow_rule(&obs.subject());
    let mut steps = Vec::new();
    let mut step = |check: &str, matched: bool, detail: String| {
        steps.push(json!({"check": check, "matched": matched, "detail": detail}));
    };
    let dst = obs.dst.map(|d| d.to_string()).unwrap_or_default();
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
    json!({
        "verdict": if suppressed { "suppressed" } else if risk > 0 { "alert" } else { "no alert" },
        "risk_score": risk,
        "severity": severity(risk),
        "list_risk_score": v.risk,
        "allow_rule": allow.filter(|_| suppressed).map(|r| r.name.clone()),
        "steps": steps,
        "note": "beacon detection needs a series of connections: see `sensor replay`",
    })
}

/// The same, for people.
pub fn render(doc: &Value) -> String {
    let mut out = format!(
        "verdict: {} (risk {}{})\n",
        doc["verdict"].as_str().unwrap_or("?"),
        doc["risk_score"],
        doc["severity"]
            .as_str()
            .map(|s| format!(", {s}"))
            .unwrap_or_default()
    );
    if let Some(rule) = doc["allow_rule"].as_str() {
        out.push_str(&format!(
            "suppressed by allow rule {rule:?}; without it: risk {}\n",
            doc["list_risk_score"]
        ));
    }
    for (i, s) in doc["steps"].as_array().into_iter().flatten().enumerate() {
        out.push_str(&format!(
            "  {}. [{}] {}: {}\n",
            i + 1,
            if s["matched"] == true { "x" } else { " " },
            s["check"].as_str().unwrap_or(""),
            s["detail"].as_str().unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(exe: &str, dst: &str, port: u16) -> Obs {
        Obs {
            executable: Some(exe.into()),
            dst: dst.parse().ok(),
            port,
            ts_ns: 1_800_000_000_000_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn chain_names_the_lists_and_the_rule() {
        let p = Policy::default();
        let d = explain(&p, &obs("/usr/bin/curl", "203.0.113.7", 8088));
        assert_eq!(d["verdict"], "alert");
        assert_eq!(d["risk_score"], 3);
        assert_eq!(d["severity"], "High");
        let text = render(&d);
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
        let d = explain(&p, &obs("/usr/bin/curl", "203.0.113.7", 8088));
        assert_eq!(d["verdict"], "suppressed");
        assert_eq!(d["risk_score"], 0);
        assert_eq!(d["list_risk_score"], 3);
        assert_eq!(d["allow_rule"], "dev");
        let text = render(&d);
        assert!(text.contains("allow rule \"dev\" matches (executable curl and port 8088), reason: local dev server"), "{text}");

        let d = explain(&p, &obs("/usr/bin/curl", "10.1.1.1", 8088));
        assert_eq!(d["verdict"], "no alert");
        assert!(render(&d).contains("10.1.1.1 is in 10.0.0.0/8"));
        assert!(
            d["allow_rule"].is_null(),
            "a rule on a non-alert suppresses nothing"
        );
        let d = explain(&p, &obs("/usr/sbin/nginx", "203.0.113.7", 5555));
        assert!(render(&d).contains("no tier applies"));
    }
}
