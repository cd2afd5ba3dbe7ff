//! The IP sets: their prefixes are loaded beside the policy, each set in
//! one of its two trie slots ([`throttle_common::set_rules`]).
//!
//! A change of a set is three steps, of which only the middle one holds
//! the control plane: its new prefixes go into the slot not in use
//! ([`SetLoader::insert`], seconds for a million prefixes, run by the
//! caller without the lock), the plan that names that slot is written
//! ([`Control::put_set`]: one write of the configuration switches every
//! packet to it), and once no packet can still be reading the old slot
//! ([`grace_period`]), the old prefixes are removed ([`Retired`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use throttle_common::flags;

use super::{effective, ChangeError, Control, StartError};
use crate::{
    kernel::{grace_period, Kernel, KernelError, SetLoader, SetPlace},
    policy::{Invalid, Parsed, Policy, SetContent, SetName, SetSpec, MAX_SETS, MAX_SET_PREFIXES},
    store::{read_netset, Store, StoreError},
};

/// A set whose prefixes are loaded.
#[derive(Debug, Clone)]
pub(super) struct LoadedSet {
    /// The trie slot that holds them; the set's index is half of it.
    pub(super) slot: u32,
    pub(super) content: Arc<SetContent>,
    /// Lines of its source that were not loaded.
    pub(super) refused: usize,
    /// When it was loaded, in seconds since the epoch.
    pub(super) loaded_at: u64,
}

/// A new version of a set, loaded into its slot not in use and waiting to
/// be put in force.
#[derive(Debug, Clone)]
pub struct StagedSet {
    pub name: SetName,
    pub slot: u32,
    pub content: Arc<SetContent>,
    pub refused: usize,
}

/// Prefixes no packet is sent to any more, by slot, to be removed once no
/// packet can still be reading them.
#[derive(Debug, Default)]
#[must_use = "retired prefixes stay in their trie until removed"]
pub struct Retired(pub Vec<(u32, Arc<SetContent>)>);

impl Retired {
    /// Waits until no packet can be reading the retired slots, then
    /// removes their prefixes.
    pub fn remove(self, loader: &mut dyn SetLoader) -> Result<(), KernelError> {
        if self.0.is_empty() {
            return Ok(());
        }
        grace_period();
        for (slot, content) in self.0 {
            loader.remove(slot, &content)?;
        }
        Ok(())
    }
}

/// A set, as `GET /v1/sets` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SetView {
    pub name: SetName,
    /// The file it is read from (again on SIGHUP); none: loaded through
    /// the API and kept in the state directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub prefixes: usize,
    pub ipv4: usize,
    pub ipv6: usize,
    /// Lines of its source that were not loaded.
    pub refused: usize,
    /// The id of the rule that names it, if one does.
    pub rule: Option<u32>,
    /// When its current version was loaded (seconds since the epoch).
    pub loaded_at: u64,
}

/// Every set, and what the tries cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SetsView {
    pub sets: Vec<SetView>,
    pub max_sets: usize,
    pub max_prefixes_per_set: usize,
    /// The kernel's account of the set tries' memory, in bytes.
    pub memory_bytes: u64,
    /// That memory over the prefixes loaded (0 with none).
    pub bytes_per_prefix: u64,
}

/// What `PUT /v1/sets/{name}` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SetLoad {
    pub name: SetName,
    /// Whether the set is new.
    pub created: bool,
    pub loaded: usize,
    pub refused: usize,
    /// The first refused lines, with why.
    pub first_refused: Vec<crate::policy::Refused>,
    /// How long the prefixes took to reach the kernel.
    pub load_ms: u64,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Where every loaded set is, for the compiler.
pub(super) fn places(sets: &BTreeMap<SetName, LoadedSet>) -> BTreeMap<SetName, SetPlace> {
    sets.iter()
        .map(|(name, set)| {
            let families = if set.content.v4.is_empty() { 0 } else { flags::SETS_V4 }
                | if set.content.v6.is_empty() { 0 } else { flags::SETS_V6 };
            (name.clone(), SetPlace { slot: set.slot, families })
        })
        .collect()
}

/// Reads the prefixes of `spec` from its file, or from the state directory
/// for a set loaded through the API.
pub fn read(spec: &SetSpec, store: Option<&Store>) -> Result<Parsed, StoreError> {
    match (&spec.file, store) {
        (Some(file), _) => read_netset(file),
        (None, Some(store)) => read_netset(&store.set_path(&spec.name)),
        (None, None) => Ok(Parsed::default()),
    }
}

/// Loads every set of the policy at start: what an earlier daemon left in
/// the slots no rule names is swept away, and each set goes into a slot
/// the rules of the maps (the earlier daemon's, when adopted) do not name,
/// so that packets keep meeting the sets in force until the first plan.
pub(super) fn load_at_start(
    kernel: &dyn Kernel,
    loader: &mut dyn SetLoader,
    specs: &[SetSpec],
    store: Option<&Store>,
) -> Result<BTreeMap<SetName, LoadedSet>, StartError> {
    let in_use = kernel.set_slots_in_use();
    let swept = loader.sweep(&|slot| in_use.contains(&slot))?;
    if swept > 0 {
        tracing::info!(prefixes = swept, "set prefixes no rule names removed");
    }
    let mut sets = BTreeMap::new();
    for (index, spec) in (0u32..).zip(specs) {
        let parsed = read(spec, store)?;
        parsed.content.validate(&format!("sets[{index}]")).map_err(|source| StartError::Invalid {
            path: spec.file.as_ref().map(|f| f.display().to_string()),
            source,
        })?;
        let slot = 2 * index + u32::from(in_use.contains(&(2 * index)));
        let started = Instant::now();
        loader.insert(slot, &parsed.content)?;
        tracing::info!(
            set = %spec.name,
            prefixes = parsed.content.len(),
            refused = parsed.refused,
            ms = started.elapsed().as_millis(),
            "set loaded"
        );
        sets.insert(
            spec.name.clone(),
            LoadedSet {
                slot,
                content: Arc::new(parsed.content),
                refused: parsed.refused,
                loaded_at: now_secs(),
            },
        );
    }
    Ok(sets)
}

/// Once the first plan is in force: removes what the earlier daemon's plan
/// named and this one does not.
pub(super) fn sweep_after_start(
    loader: &mut dyn SetLoader,
    sets: &BTreeMap<SetName, LoadedSet>,
) -> Result<(), KernelError> {
    let keep: BTreeSet<u32> = sets.values().map(|s| s.slot).collect();
    grace_period();
    loader.sweep(&|slot| keep.contains(&slot)).map(drop)
}

impl Control {
    /// The sets, in the policy's order.
    #[must_use]
    pub fn sets(&self) -> SetsView {
        let sets: Vec<SetView> = self
            .policy
            .sets
            .iter()
            .filter_map(|spec| {
                let set = self.sets.get(&spec.name)?;
                let rule = self
                    .rule_ids
                    .iter()
                    .zip(&self.policy.rules)
                    .find(|(_, r)| r.set.as_ref() == Some(&spec.name))
                    .map(|(&id, _)| id);
                Some(SetView {
                    name: spec.name.clone(),
                    file: spec.file.as_ref().map(|f| f.display().to_string()),
                    prefixes: set.content.len(),
                    ipv4: set.content.v4.len(),
                    ipv6: set.content.v6.len(),
                    refused: set.refused,
                    rule,
                    loaded_at: set.loaded_at,
                })
            })
            .collect();
        let memory_bytes = self.set_memory;
        let prefixes: usize = self.sets.values().map(|s| s.content.len()).sum();
        SetsView {
            sets,
            max_sets: MAX_SETS,
            max_prefixes_per_set: MAX_SET_PREFIXES,
            memory_bytes,
            bytes_per_prefix: if prefixes == 0 { 0 } else { memory_bytes / prefixes as u64 },
        }
    }

    /// Records the kernel's account of the set tries' memory.
    pub fn note_set_memory(&mut self, bytes: u64) {
        self.set_memory = bytes;
    }

    /// The prefixes loaded for the set `name`.
    #[must_use]
    pub fn set_content(&self, name: &SetName) -> Option<Arc<SetContent>> {
        self.sets.get(name).map(|s| s.content.clone())
    }

    /// The slot a new version of the set `name` goes to: its slot not in
    /// use, or for a new set the first slot of an index that no set holds
    /// and none of the slots `staged` is of.
    pub fn slot_for(&self, name: &SetName, staged: &[u32]) -> Result<u32, ChangeError> {
        if let Some(set) = self.sets.get(name) {
            return Ok(set.slot ^ 1);
        }
        let used: BTreeSet<u32> =
            self.sets.values().map(|s| s.slot).chain(staged.iter().copied()).map(|slot| slot / 2).collect();
        let index = (0..MAX_SETS as u32).find(|i| !used.contains(i)).ok_or_else(|| {
            Invalid::new(
                "sets",
                format!("{} sets", self.sets.len()),
                format!("at most {MAX_SETS}: remove one first"),
            )
        })?;
        Ok(2 * index)
    }

    /// `PUT /v1/sets/{name}`: puts the staged version of a set in force,
    /// kept in the state directory; whether the set is new, and the old
    /// version's prefixes to remove.
    pub fn put_set(&mut self, staged: StagedSet) -> Result<(bool, Retired), ChangeError> {
        staged.content.validate(&format!("sets.{}", staged.name))?;
        let mut specs = self.policy.sets.clone();
        let created = if let Some(spec) = specs.iter_mut().find(|s| s.name == staged.name) {
            spec.file = None;
            false
        } else {
            specs.push(SetSpec { name: staged.name.clone(), file: None });
            true
        };
        let file =
            self.store.as_ref().map(|store| store.stage_set(&staged.name, &staged.content)).transpose()?;
        let mut state = self.state.clone();
        state.sets = Some(specs);
        let policy = effective(&self.base, &state);
        let retired = self.install(vec![staged], policy, state, None, file)?;
        Ok((created, retired))
    }

    /// `DELETE /v1/sets/{name}`: refused while a rule names it.
    pub fn remove_set(&mut self, name: &SetName) -> Result<Retired, ChangeError> {
        if !self.policy.sets.iter().any(|s| &s.name == name) {
            return Err(ChangeError::NoSuchSet(name.clone()));
        }
        if let Some(id) = self
            .rule_ids
            .iter()
            .zip(&self.policy.rules)
            .find(|(_, r)| r.set.as_ref() == Some(name))
            .map(|(&id, _)| id)
        {
            return Err(ChangeError::SetInUse { name: name.clone(), id });
        }
        let mut state = self.state.clone();
        state.sets = Some(self.policy.sets.iter().filter(|s| &s.name != name).cloned().collect());
        let policy = effective(&self.base, &state);
        let retired = self.install(Vec::new(), policy, state, None, None)?;
        if let Some(store) = &self.store {
            if let Err(err) = store.remove_set(name) {
                tracing::warn!("set {name} removed, but not its file: {err}");
            }
        }
        Ok(retired)
    }

    /// The policy a new configuration file would put in force under the
    /// saved state (for SIGHUP, to know which sets to read).
    #[must_use]
    pub fn preview(&self, base: &Policy) -> Policy {
        effective(base, &self.state)
    }

    /// SIGHUP: a new configuration file, with the sets whose files changed
    /// staged.
    pub fn reload_with_sets(&mut self, base: Policy, staged: Vec<StagedSet>) -> Result<Retired, ChangeError> {
        let policy = effective(&base, &self.state);
        self.install(staged, policy, self.state.clone(), Some(base), None)
    }

    /// Puts `policy` in force with the `staged` set versions (and the sets
    /// it no longer has dropped), everything or nothing; `file` is the
    /// staged prefixes of a set kept in the state directory.
    fn install(
        &mut self,
        staged: Vec<StagedSet>,
        policy: Policy,
        state: crate::store::State,
        base: Option<Policy>,
        file: Option<crate::store::Staged>,
    ) -> Result<Retired, ChangeError> {
        let before = (self.sets.clone(), self.places.clone());
        let mut retired = Retired::default();
        let now = now_secs();
        for set in staged {
            let new =
                LoadedSet { slot: set.slot, content: set.content, refused: set.refused, loaded_at: now };
            if let Some(old) = self.sets.insert(set.name, new) {
                retired.0.push((old.slot, old.content));
            }
        }
        let names: BTreeSet<&SetName> = policy.sets.iter().map(|s| &s.name).collect();
        let gone: Vec<SetName> = self.sets.keys().filter(|n| !names.contains(n)).cloned().collect();
        for name in gone {
            let old = self.sets.remove(&name).expect("listed");
            retired.0.push((old.slot, old.content));
        }
        if let Some(missing) = policy.sets.iter().find(|s| !self.sets.contains_key(&s.name)) {
            (self.sets, self.places) = before;
            return Err(Invalid::new(
                "sets",
                format!("{:?}", missing.name.as_str()),
                "its prefixes are not loaded",
            )
            .into());
        }
        self.places = places(&self.sets);
        if let Err(err) = self.switch_with(policy, state, base, file) {
            (self.sets, self.places) = before;
            return Err(err);
        }
        Ok(retired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        control::fake::FakeKernel,
        policy::{parse_set, Action, RuleSpec, Target},
        runtime::Runtime,
    };

    fn runtime(kernel: &FakeKernel, store: Option<Store>) -> Runtime {
        Runtime::new(Control::new(Box::new(kernel.clone()), Policy::default(), store).unwrap())
    }

    fn name(text: &str) -> SetName {
        text.parse().unwrap()
    }

    fn slots(kernel: &FakeKernel) -> BTreeMap<u32, usize> {
        let tries = kernel.0.lock().unwrap().tries.clone();
        let held = tries.lock().unwrap();
        held.iter().map(|(&slot, content)| (slot, content.len())).collect()
    }

    fn written_set_slots(kernel: &FakeKernel) -> Vec<u32> {
        kernel.0.lock().unwrap().plan.as_ref().unwrap().set_rules.iter().map(|r| r.slot).collect()
    }

    #[test]
    fn a_new_version_goes_to_the_other_slot_and_the_old_one_is_removed() {
        let kernel = FakeKernel::default();
        let rt = runtime(&kernel, None);
        let load = rt.load_set(name("block"), parse_set(["192.0.2.0/24", "bad", "2001:db8::/32"])).unwrap();
        assert_eq!((load.created, load.loaded, load.refused), (true, 2, 1));
        assert_eq!(load.first_refused[0].line, 2);
        assert_eq!(slots(&kernel), BTreeMap::from([(0, 2)]));
        let id = rt.control(|c| c.add_rule(RuleSpec::of(Target::Set(name("block")), Action::Deny))).unwrap();
        assert_eq!(written_set_slots(&kernel), [0]);

        let load = rt.load_set(name("block"), parse_set(["198.51.100.0/24"])).unwrap();
        assert!(!load.created);
        assert_eq!(written_set_slots(&kernel), [1], "the rule names the new slot");
        assert_eq!(slots(&kernel), BTreeMap::from([(1, 1)]), "the old version is gone");
        let (addr_in, addr_out) = ("198.51.100.9".parse().unwrap(), "192.0.2.1".parse().unwrap());
        assert_eq!(rt.control(|c| c.rule_for(addr_in).map(|(id, _)| id)), Some(id));
        assert_eq!(rt.control(|c| c.rule_for(addr_out).map(|(id, _)| id)), None);

        let err = rt.remove_set(&name("block")).unwrap_err();
        assert!(matches!(err, ChangeError::SetInUse { id: i, .. } if i == id), "{err}");
        rt.control(|c| c.remove_rule(id)).unwrap();
        rt.remove_set(&name("block")).unwrap();
        assert!(slots(&kernel).is_empty());
        assert!(matches!(rt.remove_set(&name("block")), Err(ChangeError::NoSuchSet(_))));
    }

    #[test]
    fn a_refused_switch_leaves_the_old_version_in_force_and_unloads_the_new() {
        let kernel = FakeKernel::default();
        let rt = runtime(&kernel, None);
        rt.load_set(name("block"), parse_set(["192.0.2.0/24"])).unwrap();
        rt.control(|c| c.add_rule(RuleSpec::of(Target::Set(name("block")), Action::Deny))).unwrap();
        kernel.0.lock().unwrap().fail_next_write = true;
        let err = rt.load_set(name("block"), parse_set(["198.51.100.0/24"])).unwrap_err();
        assert!(matches!(err, ChangeError::Kernel(_)), "{err}");
        assert_eq!(slots(&kernel), BTreeMap::from([(0, 1)]));
        let sets = rt.control(|c| c.sets());
        assert_eq!(sets.sets[0].prefixes, 1);
        assert!(rt.control(|c| c.rule_for("192.0.2.3".parse().unwrap()).is_some()));
    }

    #[test]
    fn sets_loaded_through_the_api_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = FakeKernel::default();
        let rt = runtime(&kernel, Some(Store::open(dir.path()).unwrap()));
        rt.load_set(name("feed"), parse_set(["203.0.113.0/24", "2001:db8::/48"])).unwrap();
        let id = rt.control(|c| c.add_rule(RuleSpec::of(Target::Set(name("feed")), Action::Deny))).unwrap();
        drop(rt);
        let again = FakeKernel::default();
        let rt = runtime(&again, Some(Store::open(dir.path()).unwrap()));
        let sets = rt.control(|c| c.sets());
        assert_eq!((sets.sets.len(), sets.sets[0].prefixes, sets.sets[0].rule), (1, 2, Some(id)));
        assert_eq!(slots(&again).values().sum::<usize>(), 2);
    }

    #[test]
    fn at_most_max_sets_and_a_big_set_is_refused_whole() {
        let kernel = FakeKernel::default();
        let rt = runtime(&kernel, None);
        for i in 0..MAX_SETS {
            rt.load_set(name(&format!("s{i}")), parse_set(["192.0.2.0/24"])).unwrap();
        }
        let err = rt.load_set(name("one-more"), parse_set(["192.0.2.0/24"])).unwrap_err();
        assert!(err.to_string().contains("at most 8"), "{err}");
        let lines: Vec<String> =
            (0..=MAX_SET_PREFIXES as u32).map(|i| std::net::Ipv4Addr::from(i).to_string()).collect();
        let err = rt.load_set(name("s0"), parse_set(lines.iter().map(String::as_str))).unwrap_err();
        assert!(err.to_string().contains("at most 1048576"), "{err}");
        assert_eq!(rt.control(|c| c.sets()).sets[0].prefixes, 1, "unchanged");
    }
}
