//! `throttle daemon`: load (or adopt) the program, attach, enforce, serve the
//! admin API, run the controller, watch the interfaces, reload on SIGHUP,
//! and on SIGINT/SIGTERM detach (or, with `--keep-on-exit`, leave everything
//! for the next daemon). A start that fails undoes what it made.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context as _};
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::watch,
};

use crate::{
    api::{self, AppState, Token},
    control::Control,
    controller::{self, AdaptiveConfig},
    kernel::{if_index, Dataplane, Options},
    runtime::{self, EventView, Runtime},
    settings::{DaemonArgs, Settings},
    store::Store,
};

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let nofile = raise_nofile_limit();
    let settings = Settings::load(&args)?;
    if settings.interfaces.is_empty() {
        bail!("no interface to attach to: pass --iface IF or set `daemon.interfaces` in the config file");
    }
    // Every interface is there, or nothing is loaded: a name that is not
    // leaves no pins and no attachment behind.
    if let Some(missing) = settings.interfaces.iter().find(|iface| if_index(iface).is_none()) {
        bail!("no interface is named {missing:?} (`ip link` lists them): nothing was loaded or attached");
    }
    let missing = crate::kernel::missing_capabilities();
    if !missing.is_empty() {
        bail!(
            "the daemon needs CAP_BPF and CAP_NET_ADMIN, and this process lacks {}: run it as root, or \
             with those two (systemd: AmbientCapabilities=CAP_BPF CAP_NET_ADMIN, as throttle.service \
             does; by hand: setpriv --inh-caps=+bpf,+net_admin --ambient-caps=+bpf,+net_admin)",
            missing.join(" and ")
        );
    }
    let token = settings.token_file.as_deref().map(Token::read).transpose()?;
    api::check_exposure(settings.admin, token.as_ref()).map_err(anyhow::Error::msg)?;
    // Listen first: a port in use is found before anything is attached.
    let listener = TcpListener::bind(settings.admin)
        .await
        .with_context(|| format!("cannot listen on {} for the admin API (--admin)", settings.admin))?;
    let store = Store::open(&settings.state_dir)?;

    let mut dataplane = open_dataplane(&settings)?;
    if let Some(logger) = dataplane.take_logger() {
        tokio::spawn(runtime::forward_ebpf_logs(logger));
    }
    let events = dataplane.take_events();
    let captures = dataplane.take_captures();
    // The policy goes to the maps before the new program is attached: until
    // then a previous daemon's program keeps enforcing on the same maps.
    let control = Control::new(Box::new(dataplane), settings.policy.clone(), Some(store))?;
    let state = Runtime::new(control);
    read_rings(&state, events, captures);
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = start(&settings, &state, listener, token, stop_rx, nofile).await;
    let (server, sampler) = match started {
        Ok(running) => running,
        Err(err) => {
            // Attached to all or to none; what an earlier daemon left stays.
            state.leave_fleet().await;
            if let Err(undo) = state.with_control(Control::abandon).await {
                tracing::warn!("undoing the start: {undo}");
            }
            return Err(err);
        }
    };
    let watcher = tokio::spawn(runtime::watch_interfaces(state.clone()));

    state.set_ready();
    log_ready(&state);

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&args, &state).await,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    sampler.abort();
    watcher.abort();
    state.leave_fleet().await;
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(5), server).await.is_err() {
        tracing::warn!("admin API connections still open after 5 s; closing");
    }
    let keep = args.keep_on_exit;
    if keep {
        tracing::info!(pin_dir = %settings.pin_dir.display(), "leaving the program attached and pinned (--keep-on-exit)");
    } else {
        tracing::info!("detaching");
        for iface in &settings.interfaces {
            state.event(EventView::new("detach").detail(format!("{iface}: the daemon stops")));
        }
    }
    state.with_control(move |c| c.release(keep)).await.context("detaching")?;
    Ok(())
}

/// Loads the program (or adopts the pinned one's maps) and sets the
/// program that follows it; a chain refused undoes the load.
fn open_dataplane(settings: &Settings) -> anyhow::Result<Dataplane> {
    let mut dataplane = Dataplane::open(&Options {
        max_sources: settings.max_sources,
        pin_dir: Some(settings.pin_dir.clone()),
    })
    .context("loading the XDP program")?;
    if dataplane.adopted() {
        tracing::info!(
            pin_dir = %settings.pin_dir.display(),
            version = dataplane.version(),
            max_sources = dataplane.max_sources(),
            "adopted the pinned maps: buckets and counters carry on"
        );
    }
    if let Err(err) = dataplane.set_chain(settings.chain.as_deref()) {
        if let Err(undo) = dataplane.abandon() {
            tracing::warn!("undoing the start: {undo}");
        }
        return Err(err.into());
    }
    if let Some(chained) = dataplane.chained() {
        tracing::info!(
            path = %chained.path.display(),
            id = chained.id,
            name = %chained.name,
            "what throttle passes continues into XDP program {:?} (id {})",
            chained.name,
            chained.id
        );
    }
    Ok(dataplane)
}

/// The part of the start that may fail once the maps are loaded: the fleet,
/// the admin API, the attachments and the controller. The daemon then
/// undoes what it made.
async fn start(
    settings: &Settings,
    state: &Runtime,
    listener: TcpListener,
    token: Option<Token>,
    stop_rx: watch::Receiver<bool>,
    nofile: u64,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>)> {
    if let Some(cluster) = settings.cluster.clone() {
        state.join_fleet(cluster, settings.adaptive.clone()).await.context("fleet mode")?;
    }
    // After the fleet's policy, which may carry the controller's parameters.
    let saved_controller = state.control(|c| c.saved_controller().cloned());

    let cap = api::connection_cap(nofile);
    let router = api::router(AppState::new(state.clone(), token));
    let server = tokio::spawn(api::serve(listener, router, cap, stop_rx));
    tracing::info!(
        connections = cap,
        per_peer = api::MAX_CONNECTIONS_PER_PEER,
        descriptors = nofile,
        "admin API on http://{}",
        settings.admin
    );

    runtime::attach_all(state, &settings.interfaces, settings.xdp_mode).await?;

    let adaptive = saved_controller.or_else(|| settings.adaptive.clone()).unwrap_or_else(|| AdaptiveConfig {
        // Without `[adaptive]` the controller is off; it can be turned on
        // through the API, with samples pushed to /v1/latency.
        enabled: false,
        ..AdaptiveConfig::default()
    });
    let controller = controller::spawn(adaptive, Arc::new(state.clone()))?;
    state.set_controller(controller);
    let sampler = tokio::spawn(runtime::sample_forever(state.clone()));
    Ok((server, sampler))
}

/// The soft limit on descriptors Linux starts a process with, taken when
/// the real one cannot be read.
const DEFAULT_NOFILE: u64 = 1024;

/// Raises the soft limit on open descriptors to the hard one (the
/// connections the admin API may hold are a part of it: see
/// [`api::connection_cap`]) and returns the soft limit in force.
fn raise_nofile_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit, which `limit` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        tracing::warn!("getrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error());
        return DEFAULT_NOFILE;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads one rlimit, which `raised` is.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            limit = raised;
        } else {
            tracing::warn!(
                "setrlimit(RLIMIT_NOFILE, {}): {}",
                limit.rlim_max,
                std::io::Error::last_os_error()
            );
        }
    }
    limit.rlim_cur
}

/// The line that says the daemon is ready, with the policy it runs.
fn log_ready(state: &Runtime) {
    let policy = state.control(|c| c.policy().clone());
    tracing::info!(
        rate = %policy.limits.rate,
        burst = policy.limits.burst,
        unit = policy.limits.unit.name(),
        ipv4_prefix = policy.limits.ipv4_prefix,
        ipv6_prefix = policy.limits.ipv6_prefix,
        dry_run = policy.limits.dry_run,
        rules = policy.rules.len(),
        scope = policy.scope.ports.len(),
        classes = policy.classes.len(),
        sets = policy.sets.len(),
        "throttle is ready"
    );
}

/// Starts reading the data path's events and captures.
fn read_rings(
    state: &Runtime,
    events: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    captures: Option<aya::maps::RingBuf<aya::maps::MapData>>,
) {
    if let Some(ring) = events {
        tokio::spawn(runtime::forward_kernel_events(state.clone(), ring));
    }
    if let Some(ring) = captures {
        tokio::spawn(runtime::forward_captures(state.clone(), ring));
    }
}

/// SIGHUP: re-reads the file and applies its policy under the saved state,
/// or keeps the running one when it is refused.
async fn reload(args: &DaemonArgs, state: &Runtime) {
    if args.config.is_none() {
        tracing::warn!("SIGHUP without --config: nothing to reload");
        return;
    }
    let settings = match Settings::load(args) {
        Ok(settings) => settings,
        Err(err) => {
            tracing::error!("configuration not reloaded, the running one stays: {err}");
            return;
        }
    };
    let runtime = state.clone();
    let result = tokio::task::spawn_blocking(move || {
        runtime.reload(settings.policy)?;
        Ok::<_, crate::control::ChangeError>(runtime.control(|c| (c.kernel().version(), c.limits().clone())))
    })
    .await
    .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
    match result {
        Ok((version, limits)) => {
            tracing::info!(version, rate = %limits.rate, burst = limits.burst, "configuration reloaded");
            state.event(
                EventView::new("reload").by("sighup").detail(format!("configuration version {version}")),
            );
        }
        Err(err) => {
            tracing::error!("configuration not reloaded, the running one stays: {err}");
            state.event(EventView::new("reload").by("sighup").detail(format!("refused: {err}")));
        }
    }
}
