//! `throttle daemon`: load, attach, enforce, reload on SIGHUP, detach on
//! SIGINT/SIGTERM.

use std::collections::HashMap;

use anyhow::{bail, Context as _};
use ipnet::IpNet;
use throttle_common::Limit;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    config::{Action, DaemonArgs, Invalid, Policy, Settings},
    dataplane::{Dataplane, KernelRule, ProgramLogger},
};

/// Stable ids for rules: a prefix keeps its id (and so its sources keep their
/// buckets) across reloads.
#[derive(Debug, Default)]
pub struct RuleIds {
    next: u32,
    by_net: HashMap<IpNet, u32>,
}

impl RuleIds {
    /// The kernel form of the rules of a validated `policy`.
    pub fn resolve(&mut self, policy: &Policy) -> Result<Vec<KernelRule>, Invalid> {
        let nets = policy.validate()?;
        Ok(policy
            .rules
            .iter()
            .zip(nets)
            .map(|(rule, net)| {
                let id = *self.by_net.entry(net).or_insert_with(|| {
                    self.next += 1;
                    self.next
                });
                KernelRule {
                    id,
                    net,
                    action: rule.action,
                    limit: if rule.action == Action::Limit { rule.limit() } else { Limit::default() },
                }
            })
            .collect())
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let settings = Settings::load(&args)?;
    if settings.interfaces.is_empty() {
        bail!("no interface to attach to: pass --iface IF or set `daemon.interfaces` in the config file");
    }
    let mut dataplane = Dataplane::load(settings.max_sources).context("loading the XDP program")?;
    if let Some(logger) = dataplane.take_logger() {
        tokio::spawn(forward_ebpf_logs(logger));
    }
    let mut ids = RuleIds::default();
    let rules = ids.resolve(&settings.policy)?;
    dataplane.apply(&settings.policy, &rules).context("writing the configuration to the maps")?;
    for iface in &settings.interfaces {
        let attachment = dataplane.attach(iface, settings.xdp_mode)?;
        tracing::info!(iface, mode = attachment.mode, "attached");
    }
    let limits = &settings.policy.limits;
    tracing::info!(
        rate = limits.rate,
        burst = limits.burst,
        unit = ?limits.unit,
        ipv4_prefix = limits.ipv4_prefix,
        ipv6_prefix = limits.ipv6_prefix,
        dry_run = limits.dry_run,
        rules = rules.len(),
        scope = settings.policy.scope.ports.len(),
        "throttle is ready"
    );

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&args, &mut dataplane, &mut ids),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("detaching");
    drop(dataplane);
    Ok(())
}

/// SIGHUP: re-reads the file and applies it whole, or keeps the running
/// configuration when it is refused.
fn reload(args: &DaemonArgs, dataplane: &mut Dataplane, ids: &mut RuleIds) {
    if args.config.is_none() {
        tracing::warn!("SIGHUP without --config: nothing to reload");
        return;
    }
    let result = Settings::load(args).map_err(anyhow::Error::from).and_then(|settings| {
        let rules = ids.resolve(&settings.policy)?;
        dataplane.apply(&settings.policy, &rules)?;
        Ok(settings)
    });
    match result {
        Ok(settings) => tracing::info!(
            version = dataplane.version(),
            rate = settings.policy.limits.rate,
            burst = settings.policy.limits.burst,
            "configuration reloaded"
        ),
        Err(err) => tracing::error!("configuration not reloaded, the running one stays: {err:#}"),
    }
}

/// Forwards the XDP program's log records (rare events) to tracing.
async fn forward_ebpf_logs(logger: ProgramLogger) {
    // SAFETY: the logger owns its ring buffer's descriptor and keeps it open
    // for as long as the AsyncFd owns the logger.
    let Ok(mut fd) = (unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) })
    else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
