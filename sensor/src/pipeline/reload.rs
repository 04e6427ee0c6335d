//! SIGHUP: the policy re-read from `--config` and installed in the running pipeline.

use crate::{
    detect::policy::Policy,
    output::{
        self,
        ecs::{Action, Kind, StatusLine},
        status::PolicyReload,
    },
    pipeline::Pipeline,
};

/// SIGHUP: re-reads `--config`. A valid file replaces the policy; an invalid one keeps
/// the old policy and says why (stderr and a state event); nothing stops the sensor.
/// Returns the state event (`policy-reloaded` or `policy-reload-failed`).
pub fn reload(
    path: Option<&std::path::Path>,
    pipeline: &mut Pipeline,
) -> StatusLine<'static, PolicyReload> {
    let host = pipeline.host_name.clone();
    let line = |action, fields| output::status(Kind::State, action, host, fields);
    let Some(path) = path else {
        log::warn!("SIGHUP: no --config was given, nothing to reload");
        return line(
            Action::PolicyReloadFailed,
            PolicyReload {
                error: Some("no --config was given".into()),
                ..Default::default()
            },
        );
    };
    let config = Some(path.display().to_string());
    match Policy::load(path) {
        Ok(policy) => {
            let rules = policy.allow.len();
            pipeline.set_policy(policy);
            log::info!(
                "policy reloaded from {} ({rules} allow rules)",
                path.display()
            );
            line(
                Action::PolicyReloaded,
                PolicyReload {
                    config,
                    allow_rules: Some(rules),
                    error: None,
                },
            )
        }
        Err(e) => {
            log::warn!("SIGHUP: keeping the old policy: {e:#}");
            line(
                Action::PolicyReloadFailed,
                PolicyReload {
                    config,
                    allow_rules: None,
                    error: Some(format!("{e:#}")),
                },
            )
        }
    }
}
