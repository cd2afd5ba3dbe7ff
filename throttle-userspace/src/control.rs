//! The daemon's running policy and every change to it.
//!
//! A change (from the admin API, a SIGHUP or the controller) goes through
//! [`Control`]: the new policy is validated whole, the state file is staged,
//! the maps are written, and only then is the state file put in force. When
//! the kernel refuses, the previous policy is written back and the staged
//! file dropped; when the state file cannot be renamed into place, the maps
//! are put back too. Either way nothing is half-applied.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use ipnet::IpNet;
use serde::Serialize;
use throttle_common::{Bucket, BucketKey, Limit, FAMILY_V4};

use crate::{
    config::{validate_rules, Action, Invalid, Limits, Policy, RuleSpec, Scope, XdpMode},
    controller::AdaptiveConfig,
    dataplane::{bucket_key, Attachment, Dataplane, DataplaneError, KernelRule},
    store::{LimitsPatch, SavedRuleId, State, Store, StoreError},
};

pub use crate::dataplane::Counters;

/// Walks every tracked bucket on a handle of its own, so that a walk over a
/// million sources holds no lock that the API or the controller waits on.
pub type BucketWalk = Arc<dyn Fn(&mut dyn FnMut(&BucketKey, &Bucket)) + Send + Sync>;

/// What the control plane needs from the data path. [`Dataplane`] is the
/// real one; tests use an in-memory one.
pub trait Kernel: Send {
    fn apply(&mut self, policy: &Policy, rules: &[KernelRule]) -> Result<(), DataplaneError>;
    fn counters(&self) -> Result<Counters, DataplaneError>;
    /// The counters of each attached interface, and of any other (`None`)
    /// when it counted something.
    fn counters_by_interface(&self) -> Result<Vec<(Option<Attachment>, Counters)>, DataplaneError>;
    fn bucket(&self, key: &BucketKey) -> Result<Option<Bucket>, DataplaneError>;
    fn remove_bucket(&mut self, key: &BucketKey) -> Result<bool, DataplaneError>;
    /// A walk over every tracked bucket, on a handle that outlives the
    /// borrow of the kernel.
    fn bucket_walk(&self) -> Result<BucketWalk, DataplaneError>;
    fn attachments(&self) -> Vec<Attachment>;
    fn max_sources(&self) -> u32;
    fn version(&self) -> u64;
    /// Attaches to `iface` (or takes over the pinned link there).
    fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<Attachment, DataplaneError>;
    /// Detaches what a previous daemon attached to interfaces not in `keep`.
    fn release_others(&mut self, keep: &[String]) -> Result<Vec<String>, DataplaneError>;
    /// Detaches and unpins everything, or with `keep_pins` leaves it all
    /// attached and pinned for the next daemon.
    fn release(&mut self, keep_pins: bool) -> Result<(), DataplaneError>;
}

impl Kernel for Dataplane {
    fn apply(&mut self, policy: &Policy, rules: &[KernelRule]) -> Result<(), DataplaneError> {
        Dataplane::apply(self, policy, rules)
    }

    fn counters(&self) -> Result<Counters, DataplaneError> {
        Dataplane::counters(self)
    }

    fn counters_by_interface(&self) -> Result<Vec<(Option<Attachment>, Counters)>, DataplaneError> {
        Dataplane::counters_by_interface(self)
    }

    fn bucket(&self, key: &BucketKey) -> Result<Option<Bucket>, DataplaneError> {
        Dataplane::bucket(self, key)
    }

    fn remove_bucket(&mut self, key: &BucketKey) -> Result<bool, DataplaneError> {
        Dataplane::remove_bucket(self, key)
    }

    fn bucket_walk(&self) -> Result<BucketWalk, DataplaneError> {
        let walker = self.bucket_walker()?;
        Ok(Arc::new(move |f| walker.for_each(f)))
    }

    fn attachments(&self) -> Vec<Attachment> {
        Dataplane::attachments(self).to_vec()
    }

    fn max_sources(&self) -> u32 {
        Dataplane::max_sources(self)
    }

    fn version(&self) -> u64 {
        Dataplane::version(self)
    }

    fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<Attachment, DataplaneError> {
        Dataplane::attach(self, iface, mode).cloned()
    }

    fn release_others(&mut self, keep: &[String]) -> Result<Vec<String>, DataplaneError> {
        Dataplane::release_others(self, keep)
    }

    fn release(&mut self, keep_pins: bool) -> Result<(), DataplaneError> {
        Dataplane::release(self, keep_pins)
    }
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// A value is out of range or malformed; nothing changed.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The change contradicts what is there (a second rule for a prefix).
    #[error("{0}")]
    Conflict(String),
    /// What the change names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The kernel refused the new maps; the previous policy is in force.
    #[error("the kernel refused the change, the previous policy stays in force: {0}")]
    Kernel(#[from] DataplaneError),
    /// The state file could not be written; the previous policy is in force.
    #[error("the change could not be saved, the previous policy stays in force: {0}")]
    Store(#[from] StoreError),
}

/// Stable ids for rules: a prefix keeps its id (and so its sources keep their
/// buckets) across reloads and restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleIds {
    next: u32,
    by_net: HashMap<IpNet, u32>,
}

impl RuleIds {
    /// The ids saved in the state file.
    #[must_use]
    pub fn from_saved(saved: &[SavedRuleId]) -> Self {
        let by_net: HashMap<IpNet, u32> = saved.iter().map(|s| (s.cidr, s.id)).collect();
        Self { next: by_net.values().copied().max().unwrap_or(0), by_net }
    }

    /// The ids to save, in id order.
    #[must_use]
    pub fn saved(&self) -> Vec<SavedRuleId> {
        let mut saved: Vec<SavedRuleId> =
            self.by_net.iter().map(|(&cidr, &id)| SavedRuleId { cidr, id }).collect();
        saved.sort_by_key(|s| s.id);
        saved
    }

    /// The id of `net`, given one if it has none.
    pub fn id(&mut self, net: IpNet) -> u32 {
        *self.by_net.entry(net).or_insert_with(|| {
            self.next += 1;
            self.next
        })
    }

    /// The kernel form of the rules of a validated `policy`.
    pub fn resolve(&mut self, policy: &Policy) -> Result<Vec<KernelRule>, Invalid> {
        let nets = policy.validate()?;
        Ok(policy
            .rules
            .iter()
            .zip(nets)
            .map(|(rule, net)| KernelRule {
                id: self.id(net),
                net,
                action: rule.action,
                limit: if rule.action == Action::Limit { rule.limit() } else { Limit::default() },
            })
            .collect())
    }
}

/// A bucket's rank: its count, then its key (address, rule, family).
type Ranked = (u64, [u32; 4], u32, throttle_common::Family);

/// A rule with its id, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RuleView {
    pub id: u32,
    #[serde(flatten)]
    pub rule: RuleSpec,
}

/// Which counter ranks sources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RankBy {
    #[default]
    Dropped,
    Passed,
}

/// A tracked source: its bucket and what selected its limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SourceView {
    /// The address, or the prefix sources are aggregated to (`10.1.2.0/24`).
    pub source: String,
    /// The limit rule that meters it; none: the default limit.
    pub rule: Option<u32>,
    pub passed: u64,
    pub dropped: u64,
    /// The GCRA's theoretical arrival time (1/16 ns of `CLOCK_MONOTONIC`).
    pub tat: u64,
}

/// The daemon's policy: the configuration file's under the state file's,
/// scaled by the controller, and the data path that enforces it.
pub struct Control {
    kernel: Box<dyn Kernel>,
    walk: BucketWalk,
    /// From the configuration file and the flags.
    base: Policy,
    /// What the API changed, as saved.
    state: State,
    store: Option<Store>,
    ids: RuleIds,
    /// In force: `base` under `state`.
    policy: Policy,
    rules: Vec<KernelRule>,
    /// The controller's factor on every rate (1.0: as configured).
    scale: f64,
}

/// `base` with the state's changes over it.
fn effective(base: &Policy, state: &State) -> Policy {
    Policy {
        limits: state.limits.over(&base.limits),
        scope: state.scope.clone().unwrap_or_else(|| base.scope.clone()),
        rules: state.rules.clone().unwrap_or_else(|| base.rules.clone()),
    }
}

/// `rate` scaled, never below 1 per second.
fn scaled(rate: u64, scale: f64) -> u64 {
    #[expect(clippy::cast_precision_loss, clippy::cast_sign_loss, reason = "rates are at most 10^8")]
    let rate = (rate as f64 * scale).round() as u64;
    rate.max(1)
}

/// What the kernel gets: `policy` and `rules` with every rate scaled.
fn kernel_view(policy: &Policy, rules: &[KernelRule], scale: f64) -> (Policy, Vec<KernelRule>) {
    if (scale - 1.0).abs() < f64::EPSILON {
        return (policy.clone(), rules.to_vec());
    }
    let mut policy = policy.clone();
    policy.limits.rate = scaled(policy.limits.rate, scale);
    let rules = rules
        .iter()
        .zip(&policy.rules)
        .map(|(rule, spec)| {
            let mut rule = *rule;
            if rule.action == Action::Limit {
                let rate = spec.rate.unwrap_or(1);
                let burst = spec.burst.unwrap_or(rate);
                rule.limit = Limit::new(scaled(rate, scale), burst, spec.unit.unwrap_or_default().kernel());
            }
            rule
        })
        .collect();
    (policy, rules)
}

impl Control {
    /// Takes over `kernel`: restores the saved state over `base`, writes the
    /// result to the maps, and saves the rule ids. A corrupt state file or
    /// a saved policy that does not validate is an error: the daemon does not
    /// start half-configured.
    pub fn new(kernel: Box<dyn Kernel>, base: Policy, store: Option<Store>) -> Result<Self, StartError> {
        let state = match &store {
            Some(store) => store.load()?.unwrap_or_default(),
            None => State::default(),
        };
        let policy = effective(&base, &state);
        let mut ids = RuleIds::from_saved(&state.rule_ids);
        let rules = ids.resolve(&policy).map_err(|source| StartError::Invalid {
            path: store.as_ref().map(|s| s.path().display().to_string()),
            source,
        })?;
        let walk = kernel.bucket_walk()?;
        let mut control = Self { kernel, walk, base, state, store, ids, policy, rules, scale: 1.0 };
        control.kernel.apply(&control.policy, &control.rules)?;
        if control.ids.saved() != control.state.rule_ids {
            control.state.rule_ids = control.ids.saved();
            if let Some(store) = &control.store {
                store.stage(&control.state)?.commit()?;
            }
        }
        Ok(control)
    }

    /// The policy in force (unscaled).
    #[must_use]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.policy.limits
    }

    #[must_use]
    pub fn scope(&self) -> &Scope {
        &self.policy.scope
    }

    /// The rules in force, with their ids.
    #[must_use]
    pub fn rules(&self) -> Vec<RuleView> {
        self.rules
            .iter()
            .zip(&self.policy.rules)
            .map(|(k, spec)| RuleView { id: k.id, rule: spec.clone() })
            .collect()
    }

    /// The saved controller parameters, if the API changed them.
    #[must_use]
    pub fn saved_controller(&self) -> Option<&AdaptiveConfig> {
        self.state.controller.as_ref()
    }

    #[must_use]
    pub fn scale(&self) -> f64 {
        self.scale
    }

    #[must_use]
    pub fn kernel(&self) -> &dyn Kernel {
        &*self.kernel
    }

    pub fn kernel_mut(&mut self) -> &mut dyn Kernel {
        &mut *self.kernel
    }

    /// Makes `state` the saved state and its policy the one in force, or
    /// changes nothing.
    fn commit(&mut self, state: State) -> Result<(), ChangeError> {
        let policy = effective(&self.base, &state);
        self.switch(policy, state, None)
    }

    /// Puts `policy` in force with `state` saved (and `base` as the new
    /// base when given); everything or nothing.
    fn switch(&mut self, policy: Policy, mut state: State, base: Option<Policy>) -> Result<(), ChangeError> {
        let mut ids = self.ids.clone();
        let rules = ids.resolve(&policy)?;
        state.rule_ids = ids.saved();
        let staged = self.store.as_ref().map(|store| store.stage(&state)).transpose()?;
        let (kernel_policy, kernel_rules) = kernel_view(&policy, &rules, self.scale);
        if let Err(err) = self.kernel.apply(&kernel_policy, &kernel_rules) {
            self.restore();
            return Err(err.into());
        }
        if let Some(staged) = staged {
            if let Err(err) = staged.commit() {
                self.restore();
                return Err(err.into());
            }
        }
        self.ids = ids;
        self.policy = policy;
        self.rules = rules;
        self.state = state;
        if let Some(base) = base {
            self.base = base;
        }
        Ok(())
    }

    /// Writes the policy in force back to the maps after a failed change.
    fn restore(&mut self) {
        let (policy, rules) = kernel_view(&self.policy, &self.rules, self.scale);
        if let Err(err) = self.kernel.apply(&policy, &rules) {
            tracing::error!("could not write the previous policy back to the maps: {err}");
        }
    }

    /// SIGHUP: a new configuration file under the same saved state.
    pub fn reload(&mut self, base: Policy) -> Result<(), ChangeError> {
        let policy = effective(&base, &self.state);
        self.switch(policy, self.state.clone(), Some(base))
    }

    /// `PUT /v1/limits`: every field.
    pub fn set_limits(&mut self, limits: &Limits) -> Result<(), ChangeError> {
        limits.validate("limits")?;
        let mut state = self.state.clone();
        state.limits = LimitsPatch::all(limits);
        self.commit(state)
    }

    /// `PATCH /v1/limits`: the fields given.
    pub fn patch_limits(&mut self, patch: &LimitsPatch) -> Result<(), ChangeError> {
        patch.over(&self.policy.limits).validate("limits")?;
        let mut state = self.state.clone();
        state.limits = state.limits.then(patch);
        self.commit(state)
    }

    /// `PUT /v1/scope`.
    pub fn set_scope(&mut self, scope: Scope) -> Result<(), ChangeError> {
        scope.validate("scope")?;
        let mut state = self.state.clone();
        state.scope = Some(scope);
        self.commit(state)
    }

    /// `POST /v1/rules`: the new rule's id.
    pub fn add_rule(&mut self, rule: RuleSpec) -> Result<u32, ChangeError> {
        let net = rule.validate("rule")?;
        if let Some(existing) = self.rules.iter().find(|r| r.net == net) {
            return Err(ChangeError::Conflict(format!(
                "rule {} already covers {net}: delete it first to replace it",
                existing.id
            )));
        }
        let mut rules = self.policy.rules.clone();
        rules.push(rule);
        validate_rules(&rules, "rules")?;
        let mut state = self.state.clone();
        state.rules = Some(rules);
        self.commit(state)?;
        Ok(self.ids.id(net))
    }

    /// `DELETE /v1/rules/{id}`.
    pub fn remove_rule(&mut self, id: u32) -> Result<(), ChangeError> {
        let index = self
            .rules
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(|| ChangeError::NotFound(format!("no rule has id {id}")))?;
        let mut rules = self.policy.rules.clone();
        rules.remove(index);
        let mut state = self.state.clone();
        state.rules = Some(rules);
        self.commit(state)
    }

    /// `PUT /v1/controller`: saves the controller's new parameters.
    pub fn save_controller(&mut self, config: AdaptiveConfig) -> Result<(), ChangeError> {
        let mut state = self.state.clone();
        state.controller = Some(config);
        if let Some(store) = &self.store {
            store.stage(&state)?.commit()?;
        }
        self.state = state;
        Ok(())
    }

    /// The controller's factor on every rate; the buckets are kept.
    pub fn set_scale(&mut self, scale: f64) -> Result<(), DataplaneError> {
        let (policy, rules) = kernel_view(&self.policy, &self.rules, scale);
        self.kernel.apply(&policy, &rules)?;
        self.scale = scale;
        Ok(())
    }

    /// The effective (scaled) rate of the default limit and of each limit
    /// rule, by rule id (0: the default).
    #[must_use]
    pub fn effective_rates(&self) -> Vec<(u32, u64, u64)> {
        let mut out = vec![(0, self.policy.limits.rate, scaled(self.policy.limits.rate, self.scale))];
        for (rule, spec) in self.rules.iter().zip(&self.policy.rules) {
            if let (Action::Limit, Some(rate)) = (rule.action, spec.rate) {
                out.push((rule.id, rate, scaled(rate, self.scale)));
            }
        }
        out
    }

    /// The configured (unscaled) rate of bucket `key`'s limit.
    #[must_use]
    pub fn base_rate(&self, rule: u32) -> u64 {
        if rule == 0 {
            return self.policy.limits.rate;
        }
        self.rules
            .iter()
            .zip(&self.policy.rules)
            .find(|(r, _)| r.id == rule)
            .and_then(|(_, spec)| spec.rate)
            .unwrap_or(self.policy.limits.rate)
    }

    /// The rule `addr` falls under (longest prefix), as the data path picks it.
    #[must_use]
    pub fn rule_for(&self, addr: IpAddr) -> Option<&KernelRule> {
        self.rules.iter().filter(|r| r.net.contains(&addr)).max_by_key(|r| r.net.prefix_len())
    }

    /// The bucket key the data path uses for `addr`, or why it has none.
    pub fn key_for(&self, addr: IpAddr) -> Result<BucketKey, ChangeError> {
        let limits = &self.policy.limits;
        let rule = match self.rule_for(addr) {
            Some(rule) if rule.action != Action::Limit => {
                return Err(ChangeError::NotFound(format!(
                    "{addr} falls under rule {} ({} {}): it is not metered",
                    rule.id,
                    match rule.action {
                        Action::Allow => "allow",
                        _ => "deny",
                    },
                    rule.net
                )));
            }
            Some(rule) => rule.id,
            None => 0,
        };
        Ok(bucket_key(addr, rule, limits.ipv4_prefix as u8, limits.ipv6_prefix as u8))
    }

    /// The source `addr`'s bucket.
    pub fn source(&self, addr: IpAddr) -> Result<SourceView, ChangeError> {
        let key = self.key_for(addr)?;
        match self.kernel.bucket(&key)? {
            Some(bucket) => Ok(self.view(&key, &bucket)),
            None => Err(ChangeError::NotFound(format!("{addr} is not tracked (no packet metered lately)"))),
        }
    }

    /// Forgets the source `addr`'s bucket: it starts afresh with a full burst.
    pub fn reset_source(&mut self, addr: IpAddr) -> Result<(), ChangeError> {
        let key = self.key_for(addr)?;
        if self.kernel.remove_bucket(&key)? {
            Ok(())
        } else {
            Err(ChangeError::NotFound(format!("{addr} is not tracked (no packet metered lately)")))
        }
    }

    /// The `n` sources with the most packets `by`, most first.
    #[must_use]
    pub fn top(&self, n: usize, by: RankBy) -> Vec<SourceView> {
        self.views(&top_buckets(&self.walk, n, by))
    }

    /// The walk over the buckets, for the callers that run it without
    /// holding the control plane ([`top_buckets`], the sampler).
    #[must_use]
    pub fn bucket_walk(&self) -> BucketWalk {
        Arc::clone(&self.walk)
    }

    /// The configured (unscaled) rate of every limit, by the rule id its
    /// buckets carry (0: the default limit).
    #[must_use]
    pub fn base_rates(&self) -> HashMap<u32, u64> {
        std::iter::once(0).chain(self.rules.iter().map(|r| r.id)).map(|id| (id, self.base_rate(id))).collect()
    }

    /// Buckets as the API shows them.
    #[must_use]
    pub fn views(&self, buckets: &[(BucketKey, Bucket)]) -> Vec<SourceView> {
        buckets.iter().map(|(key, bucket)| self.view(key, bucket)).collect()
    }

    fn view(&self, key: &BucketKey, bucket: &Bucket) -> SourceView {
        let limits = &self.policy.limits;
        let words = key.addr;
        let (addr, prefix, full): (IpAddr, u64, u64) = if key.family == FAMILY_V4 {
            (Ipv4Addr::from(words[0].to_ne_bytes()).into(), limits.ipv4_prefix, 32)
        } else {
            let mut octets = [0u8; 16];
            for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            (Ipv6Addr::from(octets).into(), limits.ipv6_prefix, 128)
        };
        SourceView {
            source: if prefix == full { addr.to_string() } else { format!("{addr}/{prefix}") },
            rule: (key.rule != 0).then_some(key.rule),
            passed: bucket.passed,
            dropped: bucket.dropped,
            tat: bucket.tat,
        }
    }
}

/// The `n` buckets with the most packets `by`, most first.
#[must_use]
pub fn top_buckets(walk: &BucketWalk, n: usize, by: RankBy) -> Vec<(BucketKey, Bucket)> {
    // A min-heap of the best n so far: O(sources × log n), n entries kept.
    let mut heap: BinaryHeap<Reverse<Ranked>> = BinaryHeap::with_capacity(n + 1);
    let mut buckets = HashMap::with_capacity(n + 1);
    walk(&mut |key, bucket| {
        let count = match by {
            RankBy::Dropped => bucket.dropped,
            RankBy::Passed => bucket.passed,
        };
        let entry = (count, key.addr, key.rule, key.family);
        if heap.len() < n {
            heap.push(Reverse(entry));
            buckets.insert(entry, (*key, *bucket));
        } else if heap.peek().is_some_and(|Reverse(least)| *least < entry) {
            if let Some(Reverse(out)) = heap.pop() {
                buckets.remove(&out);
            }
            heap.push(Reverse(entry));
            buckets.insert(entry, (*key, *bucket));
        }
    });
    heap.into_sorted_vec().into_iter().filter_map(|Reverse(entry)| buckets.remove(&entry)).collect()
}

/// Why the daemon could not take over the data path with its policy.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{}{source}", path.as_ref().map(|p| format!("the policy saved in {p} with the configuration file: ")).unwrap_or_default())]
    Invalid { path: Option<String>, source: Invalid },
    #[error("writing the policy to the maps: {0}")]
    Kernel(#[from] DataplaneError),
}

#[cfg(test)]
pub mod fake {
    //! An in-memory [`Kernel`] for tests of the control plane.

    use std::sync::{Arc, Barrier, Mutex};

    use super::{
        Attachment, Bucket, BucketKey, BucketWalk, Counters, DataplaneError, Kernel, KernelRule, Policy,
        XdpMode,
    };

    /// What the fake kernel holds; shared with the test through an `Arc`.
    #[derive(Debug, Default)]
    pub struct FakeState {
        pub policy: Option<Policy>,
        pub rules: Vec<KernelRule>,
        pub buckets: Vec<(BucketKey, Bucket)>,
        pub counters: Counters,
        pub applies: u64,
        /// A walk over the buckets meets this barrier twice before it reads
        /// them: once when it starts, once when the test lets it go on.
        pub walk_gate: Option<Arc<Barrier>>,
        /// The next `apply` fails.
        pub fail_next_apply: bool,
    }

    #[derive(Debug, Clone, Default)]
    pub struct FakeKernel(pub Arc<Mutex<FakeState>>);

    impl Kernel for FakeKernel {
        fn apply(&mut self, policy: &Policy, rules: &[KernelRule]) -> Result<(), DataplaneError> {
            let mut s = self.0.lock().unwrap();
            if std::mem::take(&mut s.fail_next_apply) {
                return Err(DataplaneError::RuleWithoutId);
            }
            s.policy = Some(policy.clone());
            s.rules = rules.to_vec();
            s.applies += 1;
            Ok(())
        }

        fn counters(&self) -> Result<Counters, DataplaneError> {
            Ok(self.0.lock().unwrap().counters)
        }

        /// Everything on one interface.
        fn counters_by_interface(&self) -> Result<Vec<(Option<Attachment>, Counters)>, DataplaneError> {
            let attachment = Attachment { iface: "veth0".to_owned(), mode: "generic", adopted: false };
            Ok(vec![(Some(attachment), self.0.lock().unwrap().counters)])
        }

        fn bucket(&self, key: &BucketKey) -> Result<Option<Bucket>, DataplaneError> {
            Ok(self.0.lock().unwrap().buckets.iter().find(|(k, _)| k == key).map(|(_, b)| *b))
        }

        fn remove_bucket(&mut self, key: &BucketKey) -> Result<bool, DataplaneError> {
            let mut s = self.0.lock().unwrap();
            let before = s.buckets.len();
            s.buckets.retain(|(k, _)| k != key);
            Ok(s.buckets.len() != before)
        }

        fn bucket_walk(&self) -> Result<BucketWalk, DataplaneError> {
            let state = Arc::clone(&self.0);
            Ok(Arc::new(move |f| {
                let (buckets, gate) = {
                    let s = state.lock().unwrap();
                    (s.buckets.clone(), s.walk_gate.clone())
                };
                if let Some(gate) = &gate {
                    // Started; then held until the test lets it go on.
                    gate.wait();
                    gate.wait();
                }
                for (k, b) in &buckets {
                    f(k, b);
                }
            }))
        }

        fn attachments(&self) -> Vec<Attachment> {
            Vec::new()
        }

        fn max_sources(&self) -> u32 {
            1 << 20
        }

        fn version(&self) -> u64 {
            self.0.lock().unwrap().applies
        }

        fn attach(&mut self, iface: &str, _mode: XdpMode) -> Result<Attachment, DataplaneError> {
            Ok(Attachment { iface: iface.to_owned(), mode: "generic", adopted: false })
        }

        fn release_others(&mut self, _keep: &[String]) -> Result<Vec<String>, DataplaneError> {
            Ok(Vec::new())
        }

        fn release(&mut self, _keep_pins: bool) -> Result<(), DataplaneError> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fake::FakeKernel, *};
    use crate::config::Unit;

    fn control(kernel: &FakeKernel, store: Option<Store>) -> Control {
        Control::new(Box::new(kernel.clone()), Policy::default(), store).unwrap()
    }

    fn deny(cidr: &str) -> RuleSpec {
        RuleSpec { cidr: cidr.into(), action: Action::Deny, rate: None, burst: None, unit: None }
    }

    #[test]
    fn a_refused_kernel_write_changes_nothing_and_saves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = FakeKernel::default();
        let mut control = control(&kernel, Some(Store::open(dir.path()).unwrap()));
        let saved = std::fs::read_to_string(dir.path().join("state.json")).ok();
        kernel.0.lock().unwrap().fail_next_apply = true;
        let err = control.set_limits(&Limits { rate: 5, ..Limits::default() }).unwrap_err();
        assert!(matches!(err, ChangeError::Kernel(_)), "{err}");
        assert_eq!(control.limits().rate, Limits::default().rate);
        assert_eq!(kernel.0.lock().unwrap().policy.as_ref().unwrap().limits.rate, Limits::default().rate);
        assert_eq!(std::fs::read_to_string(dir.path().join("state.json")).ok(), saved);
    }

    #[test]
    fn changes_survive_a_restart_over_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = FakeKernel::default();
        let mut first = control(&kernel, Some(Store::open(dir.path()).unwrap()));
        first.patch_limits(&LimitsPatch { rate: Some(42), ..LimitsPatch::default() }).unwrap();
        let a = first.add_rule(deny("10.0.0.0/8")).unwrap();
        let b = first.add_rule(deny("2001:db8::/32")).unwrap();
        first.remove_rule(a).unwrap();
        let c = first.add_rule(deny("192.0.2.0/24")).unwrap();
        drop(first);
        let again = control(&kernel, Some(Store::open(dir.path()).unwrap()));
        assert_eq!(again.limits().rate, 42);
        assert_eq!(again.limits().burst, Limits::default().burst, "unset fields come from the file");
        let ids: Vec<u32> = again.rules().iter().map(|r| r.id).collect();
        assert_eq!(ids, [b, c]);
    }

    #[test]
    fn the_scale_reaches_the_kernel_but_not_the_policy() {
        let kernel = FakeKernel::default();
        let mut control = control(&kernel, None);
        control
            .add_rule(RuleSpec {
                cidr: "10.0.0.0/8".into(),
                action: Action::Limit,
                rate: Some(100),
                burst: None,
                unit: Some(Unit::Packets),
            })
            .unwrap();
        control.set_scale(0.5).unwrap();
        let s = kernel.0.lock().unwrap();
        assert_eq!(s.policy.as_ref().unwrap().limits.rate, 500);
        assert_eq!(s.rules[0].limit.rate(), 50);
        assert_eq!(s.rules[0].limit.burst(), 100, "the burst stays as configured");
        drop(s);
        assert_eq!(control.limits().rate, 1000);
        assert_eq!(control.effective_rates(), [(0, 1000, 500), (1, 100, 50)]);
    }

    #[test]
    fn top_keeps_the_heaviest() {
        let kernel = FakeKernel::default();
        let control = control(&kernel, None);
        for i in 0..100u32 {
            let key = bucket_key(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 0, 32, 64);
            let bucket = Bucket { tat: 0, passed: u64::from(i), dropped: u64::from(i * 7 % 100) };
            kernel.0.lock().unwrap().buckets.push((key, bucket));
        }
        let top = control.top(3, RankBy::Dropped);
        assert_eq!(top.iter().map(|s| s.dropped).collect::<Vec<_>>(), [99, 98, 97]);
        let top = control.top(2, RankBy::Passed);
        assert_eq!(top.iter().map(|s| s.source.as_str()).collect::<Vec<_>>(), ["10.0.0.99", "10.0.0.98"]);
    }
}
