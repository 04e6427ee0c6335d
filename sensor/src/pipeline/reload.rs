//! SIGHUP: the policy re-read from `--config` and installed in the running pipeline.

use serde_json::{Value, json};

use crate::{detect::policy::Policy, output, pipeline::Pipeline};

/// SIGHUP: re-reads `--config`. A valid file replaces the policy; an invalid one keeps
/// the old policy and says why (stderr and a state event); nothing stops the sensor.
/// Returns the state event and its action.
pub fn reload(path: Option<&std::path::Path>, pipeline: &mut Pipeline) -> (Value, &'static str) {
    let host = pipeline.host_name.clone();
    let failed = "policy-reload-failed";
    let Some(path) = path else {
        log::warn!("SIGHUP: no --config was given, nothing to reload");
        let doc = output::status(
            "state",
            failed,
            &host,
            json!({"error": "no --config was given"}),
        );
        return (doc, failed);
    };
    match Policy::load(path) {
        Ok(policy) => {
            let rules = policy.allow.len();
            pipeline.set_policy(policy);
            log::info!(
                "policy reloaded from {} ({rules} allow rules)",
                path.display()
            );
            let doc = output::status(
                "state",
                "policy-reloaded",
                &host,
                json!({"config": path.display().to_string(), "allow_rules": rules}),
            );
            (doc, "policy-reloaded")
        }
        Err(e) => {
            log::warn!("SIGHUP: keeping the old policy: {e:#}");
            let doc = output::status(
                "state",
                failed,
                &host,
                json!({"config": path.display().to_string(), "error": format!("{e:#}")}),
            );
            (doc, failed)
        }
    }
}
