//! The daemon's running policy and every change to it.
//!
//! A change (from the admin API, a SIGHUP or the controller) goes through
//! [`Control`]: the new policy is validated whole and compiled into a plan,
//! the state file is written beside the old one, synced and renamed into
//! place, and only then is the plan written to the maps. A state file that
//! cannot be written or renamed stops the change before the kernel sees any
//! of it; when the kernel refuses, the previous plan is written back and the
//! previous state file put back. Either way nothing is half-applied, and
//! nothing is enforced that was not saved.
//!
//! The prefixes of the IP sets are loaded beside the policy (`sets.rs`):
//! a new version of a set goes into its slot not in use, the plan that
//! names that slot is written, and only then is the old version removed.

mod fleet;
mod sets;

pub use self::fleet::{controller_params, Applied, FleetDoc, PublishError, Publisher, DOC_FORMAT};
pub use self::sets::{read as read_set, Retired, SetLoad, SetView, SetsView, StagedSet};

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;
use throttle_common::{
    class_owner, gcra::TICKS_PER_SEC, reason, Bucket, BucketKey, BAN_MARK, CLASS_OWNER, FAMILY_V4, TIER_SLOT,
};

use crate::{
    controller::AdaptiveConfig,
    kernel::{
        bucket_key, compile,
        explain::{explain, Probe},
        plan::{Ids, Plan},
        Attachment, BucketWalk, Kernel, KernelError, SetPlace, XdpMode,
    },
    policy::{
        key, validate_classes, validate_rules, Action, Class, ClassName, Invalid, Limits, LimitsPatch,
        Policy, Rate, RuleSpec, Scope, SetName, Target, Unmatched, MAX_CLASSES,
    },
    store::{Committed, SavedClassId, SavedRuleId, Staged, State, Store, StoreError},
};

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// A value is out of range or malformed; nothing changed.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A rule for that prefix or set exists already.
    #[error("`{key}`: rule {id} already covers {target}: delete it first to replace it")]
    DuplicateRule { id: u32, target: Target, key: String },
    /// No rule has that id.
    #[error("no rule has id {0}")]
    NoSuchRule(u32),
    /// No class has that name.
    #[error("no class is named \"{0}\": the classes are listed by GET /v1/classes")]
    NoSuchClass(ClassName),
    /// No set has that name.
    #[error("no set is named \"{0}\": the sets are listed by GET /v1/sets")]
    NoSuchSet(SetName),
    /// A rule names the set.
    #[error("rule {id} names set \"{name}\": delete the rule first")]
    SetInUse { name: SetName, id: u32 },
    /// A class given for one name names another.
    #[error(
        "the body names class \"{given}\" but the path names \"{path}\": \
         they must be the same (or leave the body's name out)"
    )]
    ClassNameMismatch { path: ClassName, given: ClassName },
    /// The source has no bucket.
    #[error("{0} is not tracked (no packet metered lately)")]
    NotTracked(IpAddr),
    /// No class bans the source now.
    #[error("{0} is not banned")]
    NotBanned(IpAddr),
    /// The source falls under a rule that does not meter it.
    #[error("{addr} falls under rule {id} ({} {target}): it is not metered", action.name())]
    NotMetered { addr: IpAddr, id: u32, action: Action, target: Target },
    /// The kernel refused the new maps; the previous policy is in force.
    #[error("the kernel refused the change, the previous policy stays in force: {0}")]
    Kernel(#[from] KernelError),
    /// The state file could not be written; the previous policy is in force.
    #[error("the change could not be saved, the previous policy stays in force: {0}")]
    Store(#[from] StoreError),
    /// Fleet mode: the fleet did not take the change; nothing changed.
    #[error(transparent)]
    Fleet(#[from] PublishError),
}

/// Stable ids for rules: a prefix or a set keeps its id (and so its sources
/// keep their buckets) across reloads and restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleIds {
    next: u32,
    by_target: HashMap<Target, u32>,
}

impl RuleIds {
    /// The ids saved in the state file.
    #[must_use]
    pub fn from_saved(saved: &[SavedRuleId]) -> Self {
        let by_target: HashMap<Target, u32> = saved
            .iter()
            .filter_map(|s| {
                let target = match (&s.cidr, &s.set) {
                    (Some(net), _) => Target::Cidr(*net),
                    (None, Some(name)) => Target::Set(name.clone()),
                    (None, None) => return None,
                };
                Some((target, s.id))
            })
            .collect();
        Self { next: by_target.values().copied().max().unwrap_or(0), by_target }
    }

    /// The ids to save, in id order.
    #[must_use]
    pub fn saved(&self) -> Vec<SavedRuleId> {
        let mut saved: Vec<SavedRuleId> = self
            .by_target
            .iter()
            .map(|(target, &id)| match target {
                Target::Cidr(net) => SavedRuleId { cidr: Some(*net), set: None, id },
                Target::Set(name) => SavedRuleId { cidr: None, set: Some(name.clone()), id },
            })
            .collect();
        saved.sort_by_key(|s| s.id);
        saved
    }

    /// The id of `target`, given one if it has none.
    pub fn id(&mut self, target: Target) -> u32 {
        *self.by_target.entry(target).or_insert_with(|| {
            self.next += 1;
            self.next
        })
    }

    /// The ids of the rules of `policy`, in order, once it validates.
    pub fn resolve(&mut self, policy: &Policy) -> Result<Vec<u32>, Invalid> {
        policy.validate()?;
        Ok(policy.rules.iter().map(|rule| self.id(rule.target().expect("validated"))).collect())
    }
}

/// Stable ids for classes: a class keeps its id (and so its sources keep
/// their buckets) while it exists, across changes of other classes and
/// restarts; a new class takes the lowest id no class holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassIds {
    by_name: HashMap<ClassName, u32>,
}

impl ClassIds {
    /// The ids saved in the state file.
    #[must_use]
    pub fn from_saved(saved: &[SavedClassId]) -> Self {
        Self { by_name: saved.iter().map(|s| (s.name.clone(), s.id)).collect() }
    }

    /// The ids to save, in id order.
    #[must_use]
    pub fn saved(&self) -> Vec<SavedClassId> {
        let mut saved: Vec<SavedClassId> =
            self.by_name.iter().map(|(name, &id)| SavedClassId { name: name.clone(), id }).collect();
        saved.sort_by_key(|s| s.id);
        saved
    }

    /// The ids of `classes` (validated: at most [`MAX_CLASSES`] less one),
    /// in order; the ids of classes no longer there are freed.
    pub fn resolve(&mut self, classes: &[Class]) -> Vec<u32> {
        self.by_name.retain(|name, _| classes.iter().any(|c| c.name == *name));
        classes
            .iter()
            .map(|class| {
                if let Some(&id) = self.by_name.get(&class.name) {
                    return id;
                }
                let id = (1..MAX_CLASSES as u32)
                    .find(|id| !self.by_name.values().any(|v| v == id))
                    .expect("validated: fewer classes than ids");
                self.by_name.insert(class.name.clone(), id);
                id
            })
            .collect()
    }
}

/// A rule with its id, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleView {
    pub id: u32,
    #[serde(flatten)]
    pub rule: RuleSpec,
}

impl utoipa::PartialSchema for RuleView {
    /// The rule's fields and `id` in one object. Not an `allOf` of the
    /// rule's schema: that one admits no field it does not name, as the
    /// API admits none in a rule it is sent.
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::{
            schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type},
            RefOr,
        };
        let RefOr::T(Schema::Object(mut object)) = <RuleSpec as utoipa::PartialSchema>::schema() else {
            unreachable!("a rule's schema is an object's")
        };
        let id = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
            .minimum(Some(0))
            .description(Some("The rule's id."));
        object.properties.insert("id".to_owned(), id.into());
        object.required.insert(0, "id".to_owned());
        object.description = Some("A rule with its id, as the API shows it.".to_owned());
        RefOr::T(Schema::Object(object))
    }
}

impl utoipa::ToSchema for RuleView {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        <RuleSpec as utoipa::ToSchema>::schemas(schemas);
    }
}

/// Which counter ranks sources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RankBy {
    #[default]
    Dropped,
    Passed,
}

impl RankBy {
    /// As the API spells it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Dropped => "dropped",
            Self::Passed => "passed",
        }
    }
}

/// A tracked source: its bucket and what selected its limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SourceView {
    /// The address, or the prefix sources are aggregated to (`10.1.2.0/24`).
    pub source: String,
    /// The limit rule that meters it; none: its class's limits.
    pub rule: Option<u32>,
    /// The class whose limit it is (none: a rule's, or the default class's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Which of the class's limits (0, 1, 2), or `tier:N` for a prefix tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    pub passed: u64,
    pub dropped: u64,
    /// The GCRA's theoretical arrival time (1/16 ns of `CLOCK_MONOTONIC`),
    /// [`throttle_common::BAN_MARK`] set while the source is banned.
    pub tat: u64,
    /// Whether its class banned it, and it still is.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub banned: bool,
}

/// What the data path would do with a packet now, as `GET /v1/explain`
/// answers.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ExplainView {
    pub source: String,
    /// The class that meters it (`default` for `[limits]`); none: in no class.
    pub class: Option<String>,
    /// The rule its source falls under, if any.
    pub rule: Option<RuleView>,
    /// The set that holds the source, when that rule names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set: Option<SetName>,
    /// Each bucket it meets, in order, up to the first that refuses it.
    pub limits: Vec<ExplainStep>,
    /// The verdict reason it would count (`passed`, `over_limit`, `banned`...).
    pub verdict: String,
    /// Whether it would be dropped.
    pub drops: bool,
    /// When a packet like it would pass again, if it would not now.
    pub retry_after_ms: Option<u64>,
}

/// One bucket a packet meets.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ExplainStep {
    /// `0`..`2` of the class's limits, `tier:N`, or `rule`.
    pub limit: String,
    /// The bucket's source: the address or its masked prefix.
    pub bucket: String,
    pub rate: Rate,
    pub burst: u64,
    /// Units it admits now.
    pub tokens: u64,
    /// Until it admits one more, in milliseconds (0: now).
    pub wait_ms: u64,
    pub tracked: bool,
    pub verdict: String,
}

/// A banned source, as `GET /v1/bans` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BanView {
    /// The address, or its class's aggregation prefix.
    pub source: String,
    /// The class that banned it.
    pub class: String,
    /// How long the ban still lasts.
    pub remaining_ms: u64,
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
    classes: ClassIds,
    /// In force: `base` under `state`.
    policy: Policy,
    /// The id of each rule of `policy`, in order.
    rule_ids: Vec<u32>,
    /// The id of each class of `policy`, in order.
    class_ids: Vec<u32>,
    /// The controller's factor on every rate (1.0: as configured).
    scale: f64,
    /// What the kernel holds.
    plan: Plan,
    /// The sets whose prefixes are loaded, every one of `policy.sets`.
    sets: BTreeMap<SetName, sets::LoadedSet>,
    /// Where each of them is, for the compiler.
    places: BTreeMap<SetName, SetPlace>,
    /// The kernel's account of the set tries' memory, as last noted.
    set_memory: u64,
    /// The writer of the set tries, until the runtime takes it.
    loader: Option<Box<dyn crate::kernel::SetLoader>>,
    /// Fleet mode: where API changes are written before they are made here.
    fleet: Option<Box<dyn Publisher>>,
    /// The version of the fleet's document in force (0: none).
    fleet_version: u64,
    /// A later version that did not validate here.
    fleet_refused: Option<u64>,
}

/// Puts back, last first, the files of a change that was not made.
fn revert(saved: Vec<Committed>) {
    for file in saved.into_iter().rev() {
        if let Err(err) = file.revert() {
            tracing::error!("could not put the state directory back as it was: {err}");
        }
    }
}

/// `base` with the state's changes over it.
fn effective(base: &Policy, state: &State) -> Policy {
    Policy {
        limits: state.limits.over(&base.limits),
        scope: state.scope.clone().unwrap_or_else(|| base.scope.clone()),
        classes: state.classes.clone().unwrap_or_else(|| base.classes.clone()),
        unmatched: state.unmatched.unwrap_or(base.unmatched),
        sets: state.sets.clone().unwrap_or_else(|| base.sets.clone()),
        rules: state.rules.clone().unwrap_or_else(|| base.rules.clone()),
    }
}

/// What [`Control::new`] puts in force before it owns the kernel.
struct Start {
    state: State,
    policy: Policy,
    ids: RuleIds,
    classes: ClassIds,
    rule_ids: Vec<u32>,
    class_ids: Vec<u32>,
    walk: BucketWalk,
    loader: Box<dyn crate::kernel::SetLoader>,
    sets: BTreeMap<SetName, sets::LoadedSet>,
    places: BTreeMap<SetName, SetPlace>,
    plan: Plan,
}

impl Start {
    /// The saved state over `base`, its sets loaded and its plan written,
    /// and the ids saved.
    fn take_over(kernel: &mut dyn Kernel, base: &Policy, store: Option<&Store>) -> Result<Self, StartError> {
        let mut state = match store {
            Some(store) => store.load()?.unwrap_or_default(),
            None => State::default(),
        };
        let policy = effective(base, &state);
        let mut ids = RuleIds::from_saved(&state.rule_ids);
        let rule_ids = ids.resolve(&policy).map_err(|source| StartError::Invalid {
            path: store.map(|s| s.path().display().to_string()),
            source,
        })?;
        let mut classes = ClassIds::from_saved(&state.class_ids);
        let class_ids = classes.resolve(&policy.classes);
        let walk = kernel.bucket_walk()?;
        let mut loader = kernel.set_loader()?;
        let sets = sets::load_at_start(&*kernel, &mut *loader, &policy.sets, store)?;
        let places = sets::places(&sets);
        let plan = compile(
            &policy,
            Ids { rules: &rule_ids, classes: &class_ids, sets: &places },
            1.0,
            kernel.coarse_tick_ns(),
        );
        kernel.write(&plan)?;
        sets::sweep_after_start(&mut *loader, &sets)?;
        if ids.saved() != state.rule_ids || classes.saved() != state.class_ids {
            state.rule_ids = ids.saved();
            state.class_ids = classes.saved();
            if let Some(store) = store {
                store.stage(&state)?.commit()?;
            }
        }
        Ok(Self { state, policy, ids, classes, rule_ids, class_ids, walk, loader, sets, places, plan })
    }
}

impl Control {
    /// Takes over `kernel`: restores the saved state over `base`, writes the
    /// result to the maps, and saves the rule ids. A corrupt state file or
    /// a saved policy that does not validate is an error: the daemon does not
    /// start half-configured, and what it made of the kernel is undone
    /// ([`Kernel::abandon`]).
    pub fn new(mut kernel: Box<dyn Kernel>, base: Policy, store: Option<Store>) -> Result<Self, StartError> {
        let start = match Start::take_over(&mut *kernel, &base, store.as_ref()) {
            Ok(start) => start,
            Err(err) => {
                if let Err(undo) = kernel.abandon() {
                    tracing::warn!("undoing the start: {undo}");
                }
                return Err(err);
            }
        };
        let Start { state, policy, ids, classes, rule_ids, class_ids, walk, loader, sets, places, plan } =
            start;
        Ok(Self {
            kernel,
            walk,
            base,
            state,
            store,
            ids,
            classes,
            policy,
            rule_ids,
            class_ids,
            scale: 1.0,
            plan,
            sets,
            places,
            set_memory: loader.memory_bytes(),
            loader: Some(loader),
            fleet: None,
            fleet_version: 0,
            fleet_refused: None,
        })
    }

    /// The writer of the set tries, for the one caller that changes sets.
    pub fn take_set_loader(&mut self) -> Option<Box<dyn crate::kernel::SetLoader>> {
        self.loader.take()
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

    /// The limit classes in force, in order.
    #[must_use]
    pub fn classes(&self) -> &[Class] {
        &self.policy.classes
    }

    /// The class named `name`.
    pub fn class(&self, name: &ClassName) -> Result<&Class, ChangeError> {
        self.policy
            .classes
            .iter()
            .find(|c| &c.name == name)
            .ok_or_else(|| ChangeError::NoSuchClass(name.clone()))
    }

    /// What happens to what no class matches.
    #[must_use]
    pub fn unmatched(&self) -> Unmatched {
        self.policy.unmatched
    }

    /// The rules in force, with their ids.
    #[must_use]
    pub fn rules(&self) -> Vec<RuleView> {
        self.rule_ids
            .iter()
            .zip(&self.policy.rules)
            .map(|(&id, spec)| RuleView { id, rule: spec.clone() })
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

    /// The data path, for reads.
    #[must_use]
    pub fn kernel(&self) -> &dyn Kernel {
        &*self.kernel
    }

    /// Attaches to `iface` (or takes over the link an earlier daemon pinned
    /// there).
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<Attachment, KernelError> {
        self.kernel.attach(iface, mode)
    }

    /// Starts (`Some`) or stops a capture of dropped packets.
    pub fn set_capture(
        &mut self,
        capture: Option<throttle_common::CaptureConfig>,
    ) -> Result<(), KernelError> {
        self.kernel.set_capture(capture)
    }

    /// The id of the class named `name` (0: `default`, the `[limits]` one).
    #[must_use]
    pub fn class_id(&self, name: &str) -> Option<u32> {
        if name == "default" {
            return Some(0);
        }
        self.class_ids
            .iter()
            .zip(&self.policy.classes)
            .find(|(_, c)| c.name.as_str() == name)
            .map(|(&id, _)| id)
    }

    /// Detaches what an earlier daemon attached to interfaces not in `keep`.
    pub fn release_others(&mut self, keep: &[String]) -> Result<Vec<String>, KernelError> {
        self.kernel.release_others(keep)
    }

    /// How each attachment stands with its interface now.
    #[must_use]
    pub fn presence(&self) -> Vec<(String, crate::kernel::Presence)> {
        self.kernel.presence()
    }

    /// Attaches again to an interface made again under a name attached to.
    pub fn reattach(&mut self, iface: &str) -> Result<Attachment, KernelError> {
        self.kernel.reattach(iface)
    }

    /// Undoes a start that failed: what this daemon attached and pinned
    /// goes, what an earlier one left stays.
    pub fn abandon(&mut self) -> Result<(), KernelError> {
        self.kernel.abandon()
    }

    /// Detaches and unpins everything, or with `keep_pins` leaves it all in
    /// place for the next daemon.
    pub fn release(&mut self, keep_pins: bool) -> Result<(), KernelError> {
        self.kernel.release(keep_pins)
    }

    /// Makes `state` the saved state and its policy the one in force, or
    /// changes nothing. In fleet mode the fleet takes it first: a change
    /// it refuses (another change won) is not made here either, and one it
    /// took that this node then fails to put in force is put in force by
    /// the fleet's version check, as any other node's change is.
    fn commit(&mut self, state: State) -> Result<(), ChangeError> {
        let policy = effective(&self.base, &state);
        let version = self.publish(&state)?;
        self.switch(policy, state, None)?;
        if let Some(version) = version {
            self.fleet_version = version;
        }
        Ok(())
    }

    /// Puts `policy` in force with `state` saved (and `base` as the new
    /// base when given); everything or nothing.
    fn switch(&mut self, policy: Policy, state: State, base: Option<Policy>) -> Result<(), ChangeError> {
        self.switch_with(policy, state, base, None)
    }

    /// [`Self::switch`], with a staged file of the state directory put in
    /// place just before the state file (and put back with it).
    fn switch_with(
        &mut self,
        policy: Policy,
        mut state: State,
        base: Option<Policy>,
        file: Option<Staged>,
    ) -> Result<(), ChangeError> {
        let mut ids = self.ids.clone();
        let rule_ids = ids.resolve(&policy)?;
        let mut classes = self.classes.clone();
        let class_ids = classes.resolve(&policy.classes);
        state.rule_ids = ids.saved();
        state.class_ids = classes.saved();
        let staged = self.store.as_ref().map(|store| store.stage(&state)).transpose()?;
        let plan = compile(
            &policy,
            Ids { rules: &rule_ids, classes: &class_ids, sets: &self.places },
            self.scale,
            self.kernel.coarse_tick_ns(),
        );
        // Saved first, then enforced: a change the state directory refuses
        // never reaches the kernel, not even for a moment.
        let mut saved = Vec::new();
        for file in [file, staged].into_iter().flatten() {
            match file.commit() {
                Ok(committed) => saved.push(committed),
                Err(err) => {
                    revert(saved);
                    return Err(err.into());
                }
            }
        }
        if let Err(err) = self.kernel.write(&plan) {
            self.restore();
            revert(saved);
            return Err(err.into());
        }
        self.ids = ids;
        self.classes = classes;
        self.policy = policy;
        self.rule_ids = rule_ids;
        self.class_ids = class_ids;
        self.state = state;
        self.plan = plan;
        if let Some(base) = base {
            self.base = base;
        }
        Ok(())
    }

    /// Writes the plan in force back to the maps after a failed change.
    /// (A write the kernel refuses may have written part of the plan.)
    fn restore(&mut self) {
        if let Err(err) = self.kernel.write(&self.plan) {
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

    /// `PUT /v1/classes`: the whole list, in its order.
    pub fn set_classes(&mut self, classes: Vec<Class>) -> Result<(), ChangeError> {
        validate_classes(&classes, &self.policy.scope, "classes")?;
        self.commit_classes(classes)
    }

    /// `PUT /v1/classes/{name}`: replaces the class of that name where it
    /// stands, or adds it at the end; whether it was added.
    pub fn put_class(&mut self, class: Class) -> Result<bool, ChangeError> {
        class.validate("class")?;
        let mut classes = self.policy.classes.clone();
        let created = if let Some(entry) = classes.iter_mut().find(|c| c.name == class.name) {
            *entry = class;
            false
        } else {
            classes.push(class);
            true
        };
        validate_classes(&classes, &self.policy.scope, "classes")?;
        self.commit_classes(classes)?;
        Ok(created)
    }

    /// `PUT /v1/classes/{name}`: [`Self::put_class`], once the class's
    /// name is the path's (the API gives a body without a name the path's).
    pub fn put_class_at(&mut self, name: &ClassName, class: Class) -> Result<bool, ChangeError> {
        if &class.name != name {
            return Err(ChangeError::ClassNameMismatch { path: name.clone(), given: class.name });
        }
        self.put_class(class)
    }

    /// `DELETE /v1/classes/{name}`; the other classes keep their order.
    pub fn remove_class(&mut self, name: &ClassName) -> Result<(), ChangeError> {
        let index = self
            .policy
            .classes
            .iter()
            .position(|c| &c.name == name)
            .ok_or_else(|| ChangeError::NoSuchClass(name.clone()))?;
        let mut classes = self.policy.classes.clone();
        classes.remove(index);
        self.commit_classes(classes)
    }

    /// The class list saved whole and put in force, or nothing changed.
    fn commit_classes(&mut self, classes: Vec<Class>) -> Result<(), ChangeError> {
        let mut state = self.state.clone();
        state.classes = Some(classes);
        self.commit(state)
    }

    /// `PUT /v1/unmatched`.
    pub fn set_unmatched(&mut self, unmatched: Unmatched) -> Result<(), ChangeError> {
        let mut state = self.state.clone();
        state.unmatched = Some(unmatched);
        self.commit(state)
    }

    /// `POST /v1/rules` with one rule: its id.
    pub fn add_rule(&mut self, rule: RuleSpec) -> Result<u32, ChangeError> {
        let ids = self.add_rules_keyed(vec![rule], |_| "rule".to_owned())?;
        Ok(ids[0])
    }

    /// `POST /v1/rules` with a list: every rule is checked, against the
    /// rules in force and the others of the list, and then all are added in
    /// one change (one write of the maps, one of the state file), or none
    /// is. A bad one is named by its index (`rules[3].cidr`). The new ids,
    /// in the list's order.
    pub fn add_rules(&mut self, rules: Vec<RuleSpec>) -> Result<Vec<u32>, ChangeError> {
        if rules.is_empty() {
            return Err(Invalid::new("rules", "[]", "the list is empty: it adds no rule").into());
        }
        self.add_rules_keyed(rules, |i| format!("rules[{i}]"))
    }

    fn add_rules_keyed(
        &mut self,
        new: Vec<RuleSpec>,
        key_of: impl Fn(usize) -> String,
    ) -> Result<Vec<u32>, ChangeError> {
        let in_force: HashMap<Target, u32> =
            self.rules().into_iter().filter_map(|r| Some((r.rule.target()?, r.id))).collect();
        let mut targets: Vec<Target> = Vec::with_capacity(new.len());
        let mut seen: HashMap<Target, usize> = HashMap::with_capacity(new.len());
        for (i, rule) in new.iter().enumerate() {
            let at = key_of(i);
            rule.validate(&at)?;
            let target = rule.target().expect("validated");
            target.check_known(&self.policy.sets, &at)?;
            let (field, value) = target.key_and_value();
            if let Some(&id) = in_force.get(&target) {
                return Err(ChangeError::DuplicateRule { id, target, key: key(&at, field) });
            }
            if let Some(first) = seen.insert(target.clone(), i) {
                return Err(Invalid::new(
                    key(&at, field),
                    value,
                    format!("`{}` names it already: one rule per prefix or set", key_of(first)),
                )
                .into());
            }
            targets.push(target);
        }
        let mut rules = self.policy.rules.clone();
        rules.extend(new);
        validate_rules(&rules, &self.policy.sets, "rules")?;
        let mut state = self.state.clone();
        state.rules = Some(rules);
        self.commit(state)?;
        Ok(targets.into_iter().map(|target| self.ids.id(target)).collect())
    }

    /// `DELETE /v1/rules/{id}`.
    pub fn remove_rule(&mut self, id: u32) -> Result<(), ChangeError> {
        let index = self.rule_ids.iter().position(|&r| r == id).ok_or(ChangeError::NoSuchRule(id))?;
        let mut rules = self.policy.rules.clone();
        rules.remove(index);
        let mut state = self.state.clone();
        state.rules = Some(rules);
        self.commit(state)
    }

    /// `PUT /v1/controller`: saves the controller's new parameters (in
    /// fleet mode, once the fleet took them).
    pub fn save_controller(&mut self, config: AdaptiveConfig) -> Result<(), ChangeError> {
        let mut state = self.state.clone();
        state.controller = Some(config);
        let version = self.publish(&state)?;
        if let Some(store) = &self.store {
            store.stage(&state)?.commit()?;
        }
        self.state = state;
        if let Some(version) = version {
            self.fleet_version = version;
        }
        Ok(())
    }

    /// The controller's factor on every rate; the buckets are kept.
    pub fn set_scale(&mut self, scale: f64) -> Result<(), KernelError> {
        let ids = Ids { rules: &self.rule_ids, classes: &self.class_ids, sets: &self.places };
        let plan = compile(&self.policy, ids, scale, self.kernel.coarse_tick_ns());
        self.kernel.write(&plan)?;
        self.scale = scale;
        self.plan = plan;
        Ok(())
    }

    /// Fleet mode: raises the TATs of `tats` ([`Kernel::raise_tats`]).
    pub fn raise_tats(&mut self, tats: &[(BucketKey, u64)]) -> usize {
        self.kernel.raise_tats(tats)
    }

    /// The controller's hold on the sources that came during an overload
    /// ([`Kernel::set_newcomers`]).
    pub fn set_newcomers(&mut self, newcomers: crate::kernel::NewcomerShare) -> Result<(), KernelError> {
        self.kernel.set_newcomers(newcomers)
    }

    /// The configured rate of each limit and its effective (scaled) one, by
    /// the rule id its buckets carry (0: the default limit).
    #[must_use]
    pub fn effective_rates(&self) -> Vec<(u32, Rate, Rate)> {
        self.base_rates_in_order().into_iter().map(|(id, rate)| (id, rate, rate.scaled(self.scale))).collect()
    }

    /// The configured (unscaled) rate of every limit, default first.
    fn base_rates_in_order(&self) -> Vec<(u32, Rate)> {
        std::iter::once((0, self.policy.limits.rate))
            .chain(
                self.rule_ids
                    .iter()
                    .zip(&self.policy.rules)
                    .filter_map(|(&id, spec)| spec.limit().map(|limit| (id, limit.rate))),
            )
            .collect()
    }

    /// The configured (unscaled) rate of every limit, by the rule id its
    /// buckets carry (0: the default limit).
    #[must_use]
    pub fn base_rates(&self) -> HashMap<u32, Rate> {
        self.base_rates_in_order().into_iter().collect()
    }

    /// The limits in packets that the controller's scale moves, by the `rule`
    /// word of their buckets: the default limit (0), each limit rule, and the
    /// first limit of each class marked `adaptive`, with a name (`default`,
    /// `rule N`, the class's) and the configured rate. Byte limits are
    /// scaled too but not listed: their buckets count packets.
    #[must_use]
    pub fn scaled_limits(&self) -> HashMap<u32, (String, Rate)> {
        let packets = |unit: crate::policy::Unit| unit == crate::policy::Unit::Packets;
        let limits = &self.policy.limits;
        let default = packets(limits.unit).then(|| (0, ("default".to_owned(), limits.rate)));
        let rules = self.rule_ids.iter().zip(&self.policy.rules).filter_map(|(&id, spec)| {
            spec.limit().filter(|l| packets(l.unit)).map(|l| (id, (format!("rule {id}"), l.rate)))
        });
        let classes = self.class_ids.iter().zip(&self.policy.classes).filter_map(|(&id, class)| {
            let first = class.limits.first().filter(|_| class.adaptive && packets(class.unit))?;
            Some((class_owner(id, 0), (class.name.to_string(), first.rate)))
        });
        default.into_iter().chain(rules).chain(classes).collect()
    }

    /// The rule `addr` falls under, as the data path picks it (the first
    /// rule whose set holds it, else the longest prefix), with its id.
    #[must_use]
    pub fn rule_for(&self, addr: IpAddr) -> Option<(u32, &RuleSpec)> {
        let rules = || self.rule_ids.iter().copied().zip(&self.policy.rules);
        if let Some(hit) = rules().find(|(_, r)| {
            r.set
                .as_ref()
                .is_some_and(|name| self.sets.get(name).is_some_and(|set| set.content.contains(addr)))
        }) {
            return Some(hit);
        }
        rules()
            .filter(|(_, r)| r.cidr.is_some_and(|net| net.contains(&addr)))
            .max_by_key(|(_, r)| r.cidr.map(|net| net.prefix_len()))
    }

    /// The bucket key the data path uses for `addr`, or why it has none.
    pub fn key_for(&self, addr: IpAddr) -> Result<BucketKey, ChangeError> {
        let limits = &self.policy.limits;
        let rule = match self.rule_for(addr) {
            Some((id, rule)) if rule.action != Action::Limit => {
                let target = rule.target().expect("validated");
                return Err(ChangeError::NotMetered { addr, id, action: rule.action, target });
            }
            Some((id, _)) => id,
            None => 0,
        };
        Ok(bucket_key(addr, rule, limits.ipv4_prefix, limits.ipv6_prefix))
    }

    /// The keys of every bucket `addr` may have: its rule's or the default
    /// class's first, then each limit of each class.
    fn keys_of(&self, addr: IpAddr) -> Result<Vec<BucketKey>, ChangeError> {
        let mut keys = vec![self.key_for(addr)?];
        if keys[0].rule != 0 {
            // Under a limit rule, its one bucket whatever the class.
            return Ok(keys);
        }
        for (&id, class) in self.class_ids.iter().zip(&self.policy.classes) {
            for slot in 0..u32::try_from(class.limits.len()).expect("at most 3 limits") {
                keys.push(bucket_key(addr, class_owner(id, slot), class.ipv4_prefix, class.ipv6_prefix));
            }
        }
        Ok(keys)
    }

    /// The source `addr`'s bucket: its rule's or the default class's, else
    /// that of the first class that tracks it.
    pub fn source(&self, addr: IpAddr) -> Result<SourceView, ChangeError> {
        for key in self.keys_of(addr)? {
            if let Some(bucket) = self.kernel.bucket(&key)? {
                return Ok(self.view(&key, &bucket));
            }
        }
        Err(ChangeError::NotTracked(addr))
    }

    /// Forgets every bucket of the source `addr` (its tiers' shared buckets
    /// aside): it starts afresh with a full burst.
    pub fn reset_source(&mut self, addr: IpAddr) -> Result<(), ChangeError> {
        let mut forgot = false;
        for key in self.keys_of(addr)? {
            forgot |= self.kernel.remove_bucket(&key)?;
        }
        if forgot {
            Ok(())
        } else {
            Err(ChangeError::NotTracked(addr))
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
        std::sync::Arc::clone(&self.walk)
    }

    /// Fleet mode: puts the shares of the sources' limits in force
    /// ([`Kernel::set_shares`]). How many of `shares` are tracked.
    pub fn set_shares(
        &mut self,
        default_share: u32,
        shares: &[(BucketKey, u32)],
    ) -> Result<usize, KernelError> {
        self.kernel.set_shares(default_share, shares)
    }

    /// Buckets as the API shows them.
    #[must_use]
    pub fn views(&self, buckets: &[(BucketKey, Bucket)]) -> Vec<SourceView> {
        buckets.iter().map(|(key, bucket)| self.view(key, bucket)).collect()
    }

    /// The event of the data path's `event`, its source and owner named as
    /// the policy names them.
    #[must_use]
    pub fn event_view(&self, event: &throttle_common::Event) -> crate::runtime::EventView {
        let kind = throttle_common::event::NAMES.get(event.kind as usize).copied().unwrap_or("unknown");
        let mut view = crate::runtime::EventView::new(kind);
        let owner = if event.kind == throttle_common::event::DENY_HIT { 0 } else { event.owner };
        let key = BucketKey { addr: event.addr, rule: owner, family: event.family };
        let source = self.view(&key, &Bucket::default());
        view.source = Some(source.source);
        match event.kind {
            throttle_common::event::DENY_HIT => {
                view.rule = Some(event.owner);
                view.detail = self
                    .rules()
                    .into_iter()
                    .find(|r| r.id == event.owner)
                    .and_then(|r| r.rule.target())
                    .map(|target| format!("deny {target}"));
            }
            throttle_common::event::BUDGET_DRY | throttle_common::event::BUDGET_RECOVERED => {}
            _ => {
                view.rule = source.rule.filter(|&r| r != 0);
                view.class = source.class.or_else(|| (owner == 0).then(|| "default".to_owned()));
                view.limit = source.limit;
            }
        }
        view
    }

    /// The class of a bucket whose key names a class's limit, and which of
    /// its limits or tiers: `None` for a rule's bucket.
    fn class_of_key(&self, key: &BucketKey) -> Option<(Option<&Class>, u32)> {
        if key.rule != 0 && key.rule & CLASS_OWNER == 0 {
            return None;
        }
        let id = (key.rule & !CLASS_OWNER) >> 8;
        let slot = key.rule & 0xff;
        let class = self.class_ids.iter().zip(&self.policy.classes).find(|(&c, _)| c == id).map(|(_, c)| c);
        Some((class, slot))
    }

    fn view(&self, key: &BucketKey, bucket: &Bucket) -> SourceView {
        let limits = &self.policy.limits;
        let owner = self.class_of_key(key);
        let words = key.addr;
        let (v4, v6) = match owner {
            Some((Some(class), slot)) if slot >= TIER_SLOT => class
                .tiers
                .get((slot - TIER_SLOT) as usize)
                .map_or((class.ipv4_prefix, class.ipv6_prefix), |t| {
                    (t.ipv4_prefix.unwrap_or(32), t.ipv6_prefix.unwrap_or(128))
                }),
            Some((Some(class), _)) => (class.ipv4_prefix, class.ipv6_prefix),
            _ => (limits.ipv4_prefix, limits.ipv6_prefix),
        };
        let (addr, prefix, full): (IpAddr, u8, u8) = if key.family == FAMILY_V4 {
            (Ipv4Addr::from(words[0].to_ne_bytes()).into(), v4, 32)
        } else {
            let mut octets = [0u8; 16];
            for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            (Ipv6Addr::from(octets).into(), v6, 128)
        };
        let now = self.kernel.now_ticks();
        SourceView {
            source: if prefix == full { addr.to_string() } else { format!("{addr}/{prefix}") },
            rule: owner.is_none().then_some(key.rule),
            class: owner.and_then(|(class, _)| class).map(|c| c.name.to_string()),
            limit: owner.filter(|(class, _)| class.is_some()).map(|(_, slot)| {
                if slot >= TIER_SLOT {
                    format!("tier:{}", slot - TIER_SLOT)
                } else {
                    slot.to_string()
                }
            }),
            passed: bucket.passed,
            dropped: bucket.dropped,
            tat: bucket.tat,
            banned: bucket.tat & BAN_MARK != 0 && bucket.tat & !BAN_MARK > now,
        }
    }

    /// What the data path would do now with a packet of `probe`, worked
    /// out from what the maps hold, as the program works it out (the
    /// first-seen budget taken as not spent).
    pub fn explain(&self, probe: &Probe) -> Result<ExplainView, ChangeError> {
        let now = self.kernel.now_ticks();
        let lookup_error = std::cell::RefCell::new(None);
        let bucket = |key: &BucketKey| match self.kernel.bucket(key) {
            Ok(bucket) => bucket,
            Err(err) => {
                lookup_error.borrow_mut().get_or_insert(err);
                None
            }
        };
        let in_set = |slot: u32, addr: IpAddr| {
            self.sets.values().any(|set| set.slot == slot && set.content.contains(addr))
        };
        let said = explain(&self.plan, probe, &bucket, &in_set, now);
        if let Some(err) = lookup_error.into_inner() {
            return Err(err.into());
        }
        let ms = |ticks: u64| ticks.div_ceil(TICKS_PER_SEC / 1_000);
        let class = said.class.map(|id| {
            if id == 0 {
                "default".to_owned()
            } else {
                self.class_ids
                    .iter()
                    .zip(&self.policy.classes)
                    .find(|(&c, _)| c == id)
                    .map_or_else(|| format!("#{id}"), |(_, class)| class.name.to_string())
            }
        });
        let rule = said.rule.and_then(|r| self.rules().into_iter().find(|v| v.id == r.id));
        let limits = said
            .steps
            .iter()
            .map(|step| {
                let view = self.view(&step.key, &step.bucket.unwrap_or_default());
                ExplainStep {
                    limit: step.limit.clone(),
                    bucket: view.source,
                    rate: Rate::from_interval_ticks(step.rule.interval),
                    burst: step.rule.burst(),
                    tokens: step.tokens,
                    wait_ms: ms(step.wait),
                    tracked: step.bucket.is_some(),
                    verdict: reason::NAMES[step.reason.index()].to_owned(),
                }
            })
            .collect();
        let set = rule.as_ref().and_then(|r| r.rule.set.clone());
        Ok(ExplainView {
            source: probe.source.to_string(),
            class,
            set,
            rule,
            limits,
            verdict: reason::NAMES[said.reason.index()].to_owned(),
            drops: reason::drops(said.reason),
            retry_after_ms: said.retry_after.map(ms),
        })
    }

    /// The sources banned now, longest ban first.
    #[must_use]
    pub fn bans(&self) -> Vec<BanView> {
        let now = self.kernel.now_ticks();
        let mut banned = Vec::new();
        (self.walk)(&mut |key, bucket| {
            if bucket.tat & BAN_MARK != 0 && bucket.tat & !BAN_MARK > now {
                banned.push((*key, *bucket));
            }
        });
        let mut bans: Vec<BanView> = banned
            .iter()
            .map(|(key, bucket)| {
                let view = self.view(key, bucket);
                BanView {
                    source: view.source,
                    class: view.class.unwrap_or_else(|| "(removed)".to_owned()),
                    remaining_ms: ((bucket.tat & !BAN_MARK) - now) / (TICKS_PER_SEC / 1_000),
                }
            })
            .collect();
        bans.sort_by(|a, b| b.remaining_ms.cmp(&a.remaining_ms).then_with(|| a.source.cmp(&b.source)));
        bans
    }

    /// Lifts every ban of the source `addr`: its banned buckets are
    /// forgotten, so it starts afresh with a full burst. False when it was
    /// banned by no class.
    pub fn lift_ban(&mut self, addr: IpAddr) -> Result<(), ChangeError> {
        let now = self.kernel.now_ticks();
        let mut lifted = false;
        for (&id, class) in self.class_ids.iter().zip(&self.policy.classes) {
            if class.ban.is_none() {
                continue;
            }
            for slot in 0..u32::try_from(class.limits.len()).expect("at most 3 limits") {
                let key = bucket_key(addr, class_owner(id, slot), class.ipv4_prefix, class.ipv6_prefix);
                if let Some(bucket) = self.kernel.bucket(&key)? {
                    if bucket.tat & BAN_MARK != 0 && bucket.tat & !BAN_MARK > now {
                        lifted |= self.kernel.remove_bucket(&key)?;
                    }
                }
            }
        }
        if lifted {
            Ok(())
        } else {
            Err(ChangeError::NotBanned(addr))
        }
    }
}

/// The `n` buckets with the most packets `by`, most first.
#[must_use]
pub fn top_buckets(walk: &BucketWalk, n: usize, by: RankBy) -> Vec<(BucketKey, Bucket)> {
    // A min-heap of the best n so far, ranked by count and then by the order
    // of the walk: O(sources × log n), n entries kept.
    let mut heap: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::with_capacity(n + 1);
    let mut kept: HashMap<u64, (BucketKey, Bucket)> = HashMap::with_capacity(n + 1);
    let mut seen = 0u64;
    walk(&mut |key, bucket| {
        let count = match by {
            RankBy::Dropped => bucket.dropped,
            RankBy::Passed => bucket.passed,
        };
        seen += 1;
        let entry = (count, seen);
        if heap.len() < n {
            heap.push(Reverse(entry));
            kept.insert(seen, (*key, *bucket));
        } else if heap.peek().is_some_and(|Reverse(least)| *least < entry) {
            if let Some(Reverse((_, out))) = heap.pop() {
                kept.remove(&out);
            }
            heap.push(Reverse(entry));
            kept.insert(seen, (*key, *bucket));
        }
    });
    heap.into_sorted_vec().into_iter().filter_map(|Reverse((_, at))| kept.remove(&at)).collect()
}

/// Why the daemon could not take over the data path with its policy.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Change(#[from] ChangeError),
    #[error("{}{source}", path.as_ref().map(|p| format!("the policy saved in {p} with the configuration file: ")).unwrap_or_default())]
    Invalid { path: Option<String>, source: Invalid },
    #[error("writing the policy to the maps: {0}")]
    Kernel(#[from] KernelError),
}

#[cfg(any(test, feature = "fake-kernel"))]
pub mod fake {
    //! An in-memory [`Kernel`] for tests of the control plane, and (with
    //! the `fake-kernel` feature) for the fuzz targets that drive the admin
    //! API in-process (`throttle-userspace/fuzz`).

    use std::sync::{Arc, Barrier, Mutex};

    use aya::{maps::MapError, sys::SyscallError};

    use super::{Attachment, Bucket, BucketKey, BucketWalk, Kernel, KernelError, Plan, XdpMode};
    use crate::{
        kernel::{Counters, SetLoader},
        policy::SetContent,
    };

    /// What the fake set tries hold: the prefixes of each slot.
    pub type FakeTries = Arc<Mutex<std::collections::BTreeMap<u32, SetContent>>>;

    /// A set loader that keeps each slot's prefixes in memory.
    #[derive(Debug, Clone, Default)]
    pub struct FakeLoader(pub FakeTries);

    impl SetLoader for FakeLoader {
        fn insert(&mut self, slot: u32, content: &SetContent) -> Result<(), KernelError> {
            let mut tries = self.0.lock().unwrap();
            let held = tries.entry(slot).or_default();
            *held = SetContent::new(
                held.v4.iter().chain(&content.v4).copied().collect(),
                held.v6.iter().chain(&content.v6).copied().collect(),
            );
            Ok(())
        }

        fn remove(&mut self, slot: u32, content: &SetContent) -> Result<(), KernelError> {
            let mut tries = self.0.lock().unwrap();
            if let Some(held) = tries.get_mut(&slot) {
                held.v4.retain(|net| !content.v4.contains(net));
                held.v6.retain(|net| !content.v6.contains(net));
                if held.is_empty() {
                    tries.remove(&slot);
                }
            }
            Ok(())
        }

        fn sweep(&mut self, keep: &dyn Fn(u32) -> bool) -> Result<usize, KernelError> {
            let mut tries = self.0.lock().unwrap();
            let before: usize = tries.values().map(SetContent::len).sum();
            tries.retain(|&slot, _| keep(slot));
            Ok(before - tries.values().map(SetContent::len).sum::<usize>())
        }

        fn memory_bytes(&self) -> u64 {
            0
        }
    }

    /// What the fake kernel holds; shared with the test through an `Arc`.
    #[derive(Debug, Default)]
    pub struct FakeState {
        /// The plan last written.
        pub plan: Option<Plan>,
        pub buckets: Vec<(BucketKey, Bucket)>,
        pub counters: Counters,
        pub writes: u64,
        /// A walk over the buckets meets this barrier twice before it reads
        /// them: once when it starts, once when the test lets it go on.
        pub walk_gate: Option<Arc<Barrier>>,
        /// The next write fails as a full map would.
        pub fail_next_write: bool,
        /// Now, in ticks.
        pub now: u64,
        pub tries: FakeTries,
        pub attachments: Vec<Attachment>,
        /// How attachments stand with their interfaces, when not attached.
        pub presence: std::collections::BTreeMap<String, crate::kernel::Presence>,
        /// What the last `set_shares` gave the sources it did not name.
        pub default_share: u32,
        /// What the last `set_newcomers` set.
        pub newcomers: crate::kernel::NewcomerShare,
        /// The bucket table's capacity, when not the default 2^20.
        pub max_sources: Option<u32>,
    }

    #[derive(Debug, Clone, Default)]
    pub struct FakeKernel(pub Arc<Mutex<FakeState>>);

    impl Kernel for FakeKernel {
        fn write(&mut self, plan: &Plan) -> Result<(), KernelError> {
            let mut s = self.0.lock().unwrap();
            if std::mem::take(&mut s.fail_next_write) {
                let io_error = std::io::Error::from_raw_os_error(libc::E2BIG);
                let source = MapError::SyscallError(SyscallError { call: "bpf_map_update_elem", io_error });
                return Err(KernelError::Map { map: throttle_common::map_name::RULES_V4, source });
            }
            s.plan = Some(plan.clone());
            s.writes += 1;
            Ok(())
        }

        fn coarse_tick_ns(&self) -> u64 {
            // HZ=250.
            4_000_000
        }

        fn now_ticks(&self) -> u64 {
            self.0.lock().unwrap().now
        }

        fn counters(&self) -> Result<Counters, KernelError> {
            Ok(self.0.lock().unwrap().counters)
        }

        /// Everything on one interface.
        fn counters_by_interface(&self) -> Result<Vec<(Option<Attachment>, Counters)>, KernelError> {
            let attachment = Attachment { iface: "veth0".to_owned(), mode: "generic", adopted: false };
            Ok(vec![(Some(attachment), self.0.lock().unwrap().counters)])
        }

        fn bucket(&self, key: &BucketKey) -> Result<Option<Bucket>, KernelError> {
            Ok(self.0.lock().unwrap().buckets.iter().find(|(k, _)| k == key).map(|(_, b)| *b))
        }

        fn remove_bucket(&mut self, key: &BucketKey) -> Result<bool, KernelError> {
            let mut s = self.0.lock().unwrap();
            let before = s.buckets.len();
            s.buckets.retain(|(k, _)| k != key);
            Ok(s.buckets.len() != before)
        }

        fn set_shares(
            &mut self,
            default_share: u32,
            shares: &[(BucketKey, u32)],
        ) -> Result<usize, KernelError> {
            let mut s = self.0.lock().unwrap();
            s.default_share = default_share;
            let mut tracked = 0;
            for (_, bucket) in &mut s.buckets {
                bucket.share = 0;
            }
            for (key, share) in shares {
                if let Some((_, bucket)) = s.buckets.iter_mut().find(|(k, _)| k == key) {
                    bucket.share = *share;
                    tracked += 1;
                }
            }
            Ok(tracked)
        }

        fn set_newcomers(&mut self, newcomers: crate::kernel::NewcomerShare) -> Result<(), KernelError> {
            self.0.lock().unwrap().newcomers = newcomers;
            Ok(())
        }

        fn raise_tats(&mut self, tats: &[(BucketKey, u64)]) -> usize {
            let mut s = self.0.lock().unwrap();
            let mut tracked = 0;
            for (key, tat) in tats {
                if let Some((_, bucket)) = s.buckets.iter_mut().find(|(k, _)| k == key) {
                    bucket.tat = bucket.tat.max(*tat);
                    tracked += 1;
                }
            }
            tracked
        }

        fn bucket_walk(&self) -> Result<BucketWalk, KernelError> {
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

        fn set_loader(&self) -> Result<Box<dyn SetLoader>, KernelError> {
            Ok(Box::new(FakeLoader(Arc::clone(&self.0.lock().unwrap().tries))))
        }

        fn event_stats(&self) -> Result<crate::kernel::EventStats, KernelError> {
            Ok(crate::kernel::EventStats::default())
        }

        fn set_capture(
            &mut self,
            _capture: Option<throttle_common::CaptureConfig>,
        ) -> Result<(), KernelError> {
            Ok(())
        }

        fn rule_counts(&self, ids: &[u32]) -> Result<Vec<u64>, KernelError> {
            Ok(vec![0; ids.len()])
        }

        fn set_slots_in_use(&self) -> Vec<u32> {
            let s = self.0.lock().unwrap();
            s.plan.as_ref().map(|p| p.set_rules.iter().map(|r| r.slot).collect()).unwrap_or_default()
        }

        fn attachments(&self) -> Vec<Attachment> {
            self.0.lock().unwrap().attachments.clone()
        }

        fn max_sources(&self) -> u32 {
            self.0.lock().unwrap().max_sources.unwrap_or(1 << 20)
        }

        fn version(&self) -> u64 {
            self.0.lock().unwrap().writes
        }

        fn attach(&mut self, iface: &str, _mode: XdpMode) -> Result<Attachment, KernelError> {
            let attachment = Attachment { iface: iface.to_owned(), mode: "generic", adopted: false };
            self.0.lock().unwrap().attachments.push(attachment.clone());
            Ok(attachment)
        }

        fn presence(&self) -> Vec<(String, crate::kernel::Presence)> {
            let s = self.0.lock().unwrap();
            let presence =
                |iface: &str| s.presence.get(iface).copied().unwrap_or(crate::kernel::Presence::Attached);
            s.attachments.iter().map(|a| (a.iface.clone(), presence(&a.iface))).collect()
        }

        fn reattach(&mut self, iface: &str) -> Result<Attachment, KernelError> {
            let mut s = self.0.lock().unwrap();
            s.presence.remove(iface);
            s.attachments
                .iter()
                .find(|a| a.iface == iface)
                .cloned()
                .ok_or_else(|| KernelError::NotAttached { iface: iface.to_owned() })
        }

        fn abandon(&mut self) -> Result<(), KernelError> {
            self.0.lock().unwrap().attachments.clear();
            Ok(())
        }

        fn release_others(&mut self, _keep: &[String]) -> Result<Vec<String>, KernelError> {
            Ok(Vec::new())
        }

        fn release(&mut self, _keep_pins: bool) -> Result<(), KernelError> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fake::FakeKernel, *};
    use crate::policy::{Unit, UnmatchedAction};

    fn control(kernel: &FakeKernel, store: Option<Store>) -> Control {
        Control::new(Box::new(kernel.clone()), Policy::default(), store).unwrap()
    }

    fn deny(cidr: &str) -> RuleSpec {
        RuleSpec::new(cidr.parse().unwrap(), Action::Deny)
    }

    fn written(kernel: &FakeKernel) -> Plan {
        kernel.0.lock().unwrap().plan.clone().expect("a plan was written")
    }

    #[test]
    fn a_refused_kernel_write_changes_nothing_and_saves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = FakeKernel::default();
        let mut control = control(&kernel, Some(Store::open(dir.path()).unwrap()));
        let saved = std::fs::read_to_string(dir.path().join("state.json")).ok();
        let before = written(&kernel);
        kernel.0.lock().unwrap().fail_next_write = true;
        let err = control.set_limits(&Limits { rate: Rate::per_second(5), ..Limits::default() }).unwrap_err();
        assert!(matches!(err, ChangeError::Kernel(_)), "{err}");
        assert_eq!(control.limits().rate, Limits::default().rate);
        assert_eq!(written(&kernel), before, "the previous plan is written back");
        assert_eq!(written(&kernel).classes[0].limits[0].rate(), Limits::default().rate.count);
        assert_eq!(std::fs::read_to_string(dir.path().join("state.json")).ok(), saved);
    }

    #[test]
    fn a_change_the_state_file_refuses_never_reaches_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = FakeKernel::default();
        let mut control = control(&kernel, Some(Store::open(dir.path()).unwrap()));
        control.add_rule(deny("10.0.0.0/8")).unwrap();
        // A directory in the state file's place: staging beside it works,
        // renaming over it does not.
        let path = dir.path().join("state.json");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir_all(path.join("in-the-way")).unwrap();
        let (before, writes) = (written(&kernel), kernel.0.lock().unwrap().writes);
        let err = control.add_rule(deny("192.0.2.0/24")).unwrap_err();
        assert!(matches!(err, ChangeError::Store(_)), "{err}");
        assert_eq!(kernel.0.lock().unwrap().writes, writes, "the kernel was not written to");
        assert_eq!(written(&kernel), before);
        assert_eq!(control.rules().len(), 1, "the rules are as they were");
    }

    #[test]
    fn a_refused_kernel_write_puts_the_state_file_back() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = FakeKernel::default();
        let mut control = control(&kernel, Some(Store::open(dir.path()).unwrap()));
        control.add_rule(deny("10.0.0.0/8")).unwrap();
        let saved = std::fs::read(dir.path().join("state.json")).unwrap();
        kernel.0.lock().unwrap().fail_next_write = true;
        control.add_rule(deny("192.0.2.0/24")).unwrap_err();
        assert_eq!(std::fs::read(dir.path().join("state.json")).unwrap(), saved);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["state.json"], "no temporary file is left");
    }

    #[test]
    fn changes_survive_a_restart_over_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = FakeKernel::default();
        let mut first = control(&kernel, Some(Store::open(dir.path()).unwrap()));
        first
            .patch_limits(&LimitsPatch { rate: Some(Rate::per_second(42)), ..LimitsPatch::default() })
            .unwrap();
        let a = first.add_rule(deny("10.0.0.0/8")).unwrap();
        let b = first.add_rule(deny("2001:db8::/32")).unwrap();
        first.remove_rule(a).unwrap();
        let c = first.add_rule(deny("192.0.2.0/24")).unwrap();
        drop(first);
        let again = control(&kernel, Some(Store::open(dir.path()).unwrap()));
        assert_eq!(again.limits().rate, Rate::per_second(42));
        assert_eq!(again.limits().burst, Limits::default().burst, "unset fields come from the file");
        let ids: Vec<u32> = again.rules().iter().map(|r| r.id).collect();
        assert_eq!(ids, [b, c]);
    }

    fn class(name: &str, proto: &str, ports: &str, rate: &str) -> Class {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "match": [{"proto": proto, "ports": ports}],
            "limits": [{"rate": rate}],
        }))
        .unwrap()
    }

    fn names(control: &Control) -> Vec<&str> {
        control.classes().iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn class_changes_survive_a_restart_over_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = FakeKernel::default();
        let base = Policy { classes: vec![class("file", "udp", "123", "5")], ..Policy::default() };
        let start = |base: &Policy| {
            Control::new(Box::new(kernel.clone()), base.clone(), Some(Store::open(dir.path()).unwrap()))
                .unwrap()
        };
        let mut first = start(&base);
        assert_eq!(names(&first), ["file"], "the file's classes until the API changes them");
        first
            .set_classes(vec![class("dns", "udp", "53", "50/second"), class("ssh", "tcp", "22", "3/minute")])
            .unwrap();
        assert!(!first.put_class(class("dns", "udp", "53", "100/second")).unwrap());
        assert!(first.put_class(class("web", "tcp", "443", "20/s")).unwrap());
        first.remove_class(&"ssh".parse().unwrap()).unwrap();
        first.set_unmatched(Unmatched { action: UnmatchedAction::Pass }).unwrap();
        let expected = first.classes().to_vec();
        drop(first);
        let again = start(&base);
        assert_eq!(again.classes(), expected);
        assert_eq!(names(&again), ["dns", "web"]);
        assert_eq!(again.classes()[0].limits[0].rate, Rate::per_second(100));
        assert_eq!(again.unmatched().action, UnmatchedAction::Pass);
        assert_eq!(again.policy().classes, again.classes());
    }

    #[test]
    fn a_change_to_one_class_leaves_the_others_where_they_stand() {
        let kernel = FakeKernel::default();
        let mut control = control(&kernel, None);
        let list = vec![
            class("a", "udp", "53", "5"),
            class("b", "tcp", "22", "3/minute"),
            class("c", "tcp", "8000-8100", "20"),
        ];
        control.set_classes(list.clone()).unwrap();
        let writes = kernel.0.lock().unwrap().writes;
        let b = class("b", "tcp", "2222", "6/minute");
        assert!(!control.put_class(b.clone()).unwrap());
        assert_eq!(control.classes(), [list[0].clone(), b, list[2].clone()]);
        assert_eq!(kernel.0.lock().unwrap().writes, writes + 1, "written once");
        control.remove_class(&"a".parse().unwrap()).unwrap();
        assert_eq!(names(&control), ["b", "c"]);
    }

    #[test]
    fn a_missing_class_a_mismatched_name_and_an_overlap_are_told_apart_and_change_nothing() {
        let kernel = FakeKernel::default();
        let mut control = control(&kernel, None);
        control.set_classes(vec![class("dns", "udp", "53", "5")]).unwrap();
        let before = control.classes().to_vec();
        let ghost: ClassName = "ghost".parse().unwrap();
        assert!(matches!(control.remove_class(&ghost), Err(ChangeError::NoSuchClass(n)) if n == ghost));
        assert!(matches!(control.class(&ghost), Err(ChangeError::NoSuchClass(_))));
        let err = control.put_class_at(&ghost, class("dns", "udp", "53", "9")).unwrap_err();
        assert!(
            matches!(&err, ChangeError::ClassNameMismatch { path, given } if path == &ghost && given.as_str() == "dns"),
            "{err}"
        );
        let err = control.put_class(class("alt", "udp", "50-60", "9")).unwrap_err().to_string();
        assert!(err.contains("`classes[1].match[0].ports` = udp/53") && err.contains("\"dns\""), "{err}");
        let err = control
            .set_scope(Scope {
                ports: vec![crate::policy::ScopePort {
                    proto: crate::policy::Proto::Udp,
                    port: 53,
                    syn_only: false,
                }],
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("scope.ports[0]"), "the scope is checked with the classes: {err}");
        assert_eq!(control.classes(), before);
        assert!(control.scope().ports.is_empty());
    }

    #[test]
    fn the_scale_reaches_the_kernel_but_not_the_policy() {
        let kernel = FakeKernel::default();
        let mut control = control(&kernel, None);
        control
            .add_rule(RuleSpec {
                rate: Some(Rate::per_second(100)),
                unit: Some(Unit::Packets),
                ..RuleSpec::new("10.0.0.0/8".parse().unwrap(), Action::Limit)
            })
            .unwrap();
        control.set_scale(0.5).unwrap();
        let plan = written(&kernel);
        assert_eq!(plan.classes[0].limits[0].rate(), 500);
        let rule = plan.rules_v4[&(8, [10, 0, 0, 0])];
        assert_eq!(rule.limit.rate(), 50);
        assert_eq!(rule.limit.burst(), 100, "the burst stays as configured");
        assert_eq!(control.limits().rate, Rate::per_second(1000));
        let per_sec = Rate::per_second;
        assert_eq!(
            control.effective_rates(),
            [(0, per_sec(1000), per_sec(500)), (1, per_sec(100), per_sec(50))]
        );
    }

    #[test]
    fn a_second_rule_for_a_prefix_and_a_missing_rule_are_told_apart() {
        let kernel = FakeKernel::default();
        let mut control = control(&kernel, None);
        let id = control.add_rule(deny("10.0.0.0/8")).unwrap();
        let err = control.add_rule(deny("10.0.0.0/8")).unwrap_err();
        assert!(matches!(err, ChangeError::DuplicateRule { id: i, .. } if i == id), "{err}");
        assert!(matches!(control.remove_rule(id + 1), Err(ChangeError::NoSuchRule(n)) if n == id + 1));
        let addr: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(matches!(control.source(addr), Err(ChangeError::NotMetered { action: Action::Deny, .. })));
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(matches!(control.source(other), Err(ChangeError::NotTracked(a)) if a == other));
    }

    #[test]
    fn bans_are_listed_while_they_last_and_lifted_on_request() {
        let kernel = FakeKernel::default();
        let class: Class = serde_json::from_value(serde_json::json!({
            "name": "ssh", "match": [{"proto": "tcp", "ports": "22", "syn_only": true}],
            "limits": [{"rate": "3/minute", "burst": 5}], "ban": {"after": "30s", "duration": "15m"}
        }))
        .unwrap();
        let policy = Policy { classes: vec![class], ..Policy::default() };
        let mut control = Control::new(Box::new(kernel.clone()), policy, None).unwrap();
        let now = 1_000 * TICKS_PER_SEC;
        let banned: IpAddr = "192.0.2.7".parse().unwrap();
        let over: IpAddr = "192.0.2.8".parse().unwrap();
        {
            let mut s = kernel.0.lock().unwrap();
            s.now = now;
            let until = (now + 90 * TICKS_PER_SEC) | BAN_MARK;
            let bucket = |tat| Bucket { tat, passed: 5, dropped: 40, ..Bucket::default() };
            s.buckets.push((bucket_key(banned, class_owner(1, 0), 32, 64), bucket(until)));
            // A ban that is over, and a source merely over its limit.
            s.buckets.push((bucket_key(over, class_owner(1, 0), 32, 64), bucket((now - 1) | BAN_MARK)));
            s.buckets
                .push((bucket_key("192.0.2.9".parse().unwrap(), class_owner(1, 0), 32, 64), bucket(now + 5)));
        }
        let bans = control.bans();
        assert_eq!(bans, [BanView { source: "192.0.2.7".into(), class: "ssh".into(), remaining_ms: 90_000 }]);
        let buckets = kernel.0.lock().unwrap().buckets.clone();
        let view = control.views(&buckets);
        assert_eq!(view[0].class.as_deref(), Some("ssh"));
        assert_eq!(view[0].limit.as_deref(), Some("0"));
        assert_eq!(view[0].rule, None);
        assert!(view[0].banned && !view[1].banned && !view[2].banned);
        let source = control.source(banned).unwrap();
        assert_eq!((source.class.as_deref(), source.banned), (Some("ssh"), true), "found in its class");
        control.lift_ban(banned).unwrap();
        assert!(control.bans().is_empty());
        assert!(matches!(control.lift_ban(banned), Err(ChangeError::NotBanned(a)) if a == banned));
        assert!(matches!(control.lift_ban(over), Err(ChangeError::NotBanned(_))), "an ended ban is no ban");
        control.reset_source(over).unwrap();
        assert!(matches!(control.source(over), Err(ChangeError::NotTracked(_))), "reset in its class too");
    }

    #[test]
    fn top_keeps_the_heaviest() {
        let kernel = FakeKernel::default();
        let control = control(&kernel, None);
        for i in 0..100u32 {
            let key = bucket_key(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 0, 32, 64);
            let bucket =
                Bucket { tat: 0, passed: u64::from(i), dropped: u64::from(i * 7 % 100), ..Bucket::default() };
            kernel.0.lock().unwrap().buckets.push((key, bucket));
        }
        let top = control.top(3, RankBy::Dropped);
        assert_eq!(top.iter().map(|s| s.dropped).collect::<Vec<_>>(), [99, 98, 97]);
        let top = control.top(2, RankBy::Passed);
        assert_eq!(top.iter().map(|s| s.source.as_str()).collect::<Vec<_>>(), ["10.0.0.99", "10.0.0.98"]);
    }
}
