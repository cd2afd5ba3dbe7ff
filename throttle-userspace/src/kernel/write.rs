//! Writing a plan into the maps, diffed against what they hold, in the order
//! that keeps every packet's verdict that of the old plan or of the new one:
//!
//! 1. new and changed classes, then the ports they or the scope claim anew
//!    or from another class (each entry one word: a packet meets the old
//!    class or the new one);
//! 2. new and changed rules;
//! 3. the new rule filter, into the bank not in use, with its masks, and
//!    the new set rules, into the bank of `SET_RULES` not in use;
//! 4. the global settings, which switch to those banks (the version grows);
//! 5. the ports no longer claimed, the classes nothing claims any more, and
//!    the rules no longer there.
//!
//! Buckets are never touched: every source keeps its state.

use std::collections::BTreeMap;

use aya::maps::{lpm_trie::Key, LpmTrie, MapData};
use throttle_common::{flags, map_name, rule_filter, set_rules, ClassConfig, Config, Rule, MAX_SETS};

use super::{
    error::{map_err, KernelError},
    maps::Dataplane,
    plan::{Placement, Plan, TrieKey},
    rule_filter::Region,
    sys::if_index,
    NewcomerShare,
};

impl Dataplane {
    /// Puts `plan` in force.
    pub fn write(&mut self, plan: &Plan) -> Result<(), KernelError> {
        // 1. Scope words that gain bits: the union.
        for (id, class) in (0..).zip(&plan.classes) {
            if *class != ClassConfig::default() && self.held.plan.classes[id as usize] != *class {
                self.write_class(id, *class)?;
            }
        }
        for (index, &new) in (0..).zip(&plan.class_of) {
            if new != 0 && self.held.plan.class_of[index as usize] != new {
                self.write_class_of(index, new)?;
            }
        }
        // 2. Rules, new or changed.
        let held = &mut self.held.plan;
        insert_rules(&mut self.rules_v4, &mut held.rules_v4, &plan.rules_v4, map_name::RULES_V4)?;
        insert_rules(&mut self.rules_v6, &mut held.rules_v6, &plan.rules_v6, map_name::RULES_V6)?;
        // 3. The rule filter, in the bank not in use unless the bank in use
        // holds it already.
        let placement = self.place_filter(plan)?;
        let set_bank = self.place_set_rules(plan)?;
        // 4. The global settings.
        let placement = Placement { version: self.held.placement.version + 1, set_bank, ..placement };
        self.write_config(plan, placement)?;
        self.held.plan.settings = plan.settings;
        self.written = true;
        // 5. What is no longer there, now that nothing refers to it.
        for (index, &new) in (0..).zip(&plan.class_of) {
            if self.held.plan.class_of[index as usize] != new {
                self.write_class_of(index, new)?;
            }
        }
        for (id, class) in (0..).zip(&plan.classes) {
            if self.held.plan.classes[id as usize] != *class {
                self.write_class(id, *class)?;
            }
        }
        let held = &mut self.held.plan;
        remove_rules(&mut self.rules_v4, &mut held.rules_v4, &plan.rules_v4, map_name::RULES_V4)?;
        remove_rules(&mut self.rules_v6, &mut held.rules_v6, &plan.rules_v6, map_name::RULES_V6)?;
        debug_assert_eq!(self.held.plan, *plan);
        Ok(())
    }

    /// Writes the plan's rule filter where the configuration can switch to
    /// it, and returns the placement that does.
    fn place_filter(&mut self, plan: &Plan) -> Result<Placement, KernelError> {
        let held = self.held.placement;
        let in_use = (&self.held.plan.filter_v4, &self.held.plan.filter_v6);
        if in_use == (&plan.filter_v4, &plan.filter_v6) {
            // Masks left at 0 by an earlier build's daemon are filled in:
            // from 0 (walk the trie) to the bank's own mask is safe.
            let shifts = shifts_with(held.shifts, held.bank, &plan.filter_v4, &plan.filter_v6);
            if shifts != held.shifts {
                self.write_config(&self.held.plan.clone(), Placement { shifts, ..held })?;
            }
            return Ok(self.held.placement);
        }
        let bank = held.bank ^ 1;
        for (ipv6, region, standby) in [
            (false, &plan.filter_v4, self.held.standby.0.clone()),
            (true, &plan.filter_v6, self.held.standby.1.clone()),
        ] {
            let start = rule_filter::region(bank, ipv6);
            for ((index, &word), &old) in (start..).zip(region.words()).zip(standby.words()) {
                if word != old {
                    self.rule_filter.set(index, word, 0).map_err(map_err(map_name::RULE_FILTER))?;
                }
            }
        }
        // The masks of the bank not in use change before the switch to it,
        // so that no packet pairs a bank with another filter's mask.
        let shifts = shifts_with(held.shifts, bank, &plan.filter_v4, &plan.filter_v6);
        if shifts != held.shifts {
            self.write_config(&self.held.plan.clone(), Placement { shifts, ..held })?;
        }
        let old_v4 = std::mem::replace(&mut self.held.plan.filter_v4, plan.filter_v4.clone());
        let old_v6 = std::mem::replace(&mut self.held.plan.filter_v6, plan.filter_v6.clone());
        self.held.standby = (old_v4, old_v6);
        Ok(Placement { bank, shifts, ..self.held.placement })
    }

    /// Writes the plan's set rules into the bank of `SET_RULES` not in use
    /// (unless the bank in use holds them already), and returns the bank
    /// that holds them. Entries past the rules are zeroed.
    fn place_set_rules(&mut self, plan: &Plan) -> Result<u32, KernelError> {
        let held = self.held.placement.set_bank;
        if self.held.plan.set_rules == plan.set_rules {
            return Ok(held);
        }
        let bank = held ^ 1;
        for index in 0..MAX_SETS {
            let rule = plan.set_rules.get(index as usize).copied().unwrap_or_default();
            self.set_rules
                .set(set_rules::entry(bank, index), rule, 0)
                .map_err(map_err(map_name::SET_RULES))?;
        }
        self.held.plan.set_rules.clone_from(&plan.set_rules);
        Ok(bank)
    }

    /// Writes the `CONFIG` entry of `plan` placed at `placement`, naming the
    /// counters slot of the interface when the program is attached to one
    /// only (the program then skips looking the slot up).
    pub(super) fn write_config(&mut self, plan: &Plan, placement: Placement) -> Result<(), KernelError> {
        let placement = Placement { one_iface_slot: self.one_iface_slot(false), ..placement };
        self.set_config(&plan.config(placement))?;
        self.held.placement = placement;
        Ok(())
    }

    /// Writes the settings in force again, for the interfaces attached now;
    /// `attaching`: another one is on its way, so no single interface is
    /// named. Nothing before the first plan.
    pub(super) fn rewrite_config(&mut self, attaching: bool) -> Result<(), KernelError> {
        if !self.written {
            return Ok(());
        }
        let placement = Placement { one_iface_slot: self.one_iface_slot(attaching), ..self.held.placement };
        self.set_config(&self.held.plan.config(placement))?;
        self.held.placement = placement;
        Ok(())
    }

    /// The counters slot of the one interface attached, when there is one
    /// only and no other is on its way.
    fn one_iface_slot(&self, attaching: bool) -> Option<u32> {
        match (self.attachments.as_slice(), attaching) {
            ([only], false) => if_index(&only.iface).and_then(|i| self.slots.get(&i).copied()),
            _ => None,
        }
    }

    fn set_config(&mut self, config: &Config) -> Result<(), KernelError> {
        let (bucket_seed, bucket_groups) = self.table_geometry();
        let NewcomerShare { known_before, share: newcomer_share } = self.newcomers;
        let config = Config {
            flags: config.flags | if self.chained.is_some() { flags::CHAIN } else { 0 },
            bucket_seed,
            bucket_groups,
            default_share: self.default_share,
            known_before,
            newcomer_share,
            ..*config
        };
        self.config.set(0, config, 0).map_err(map_err(map_name::CONFIG))
    }

    fn write_class_of(&mut self, index: u32, entry: u32) -> Result<(), KernelError> {
        self.class_of.set(index, entry, 0).map_err(map_err(map_name::CLASS_OF))?;
        self.held.plan.class_of[index as usize] = entry;
        Ok(())
    }

    fn write_class(&mut self, id: u32, class: ClassConfig) -> Result<(), KernelError> {
        self.classes.set(id, class, 0).map_err(map_err(map_name::CLASSES))?;
        self.held.plan.classes[id as usize] = class;
        Ok(())
    }
}

/// Inserts the entries of `new` that `held` (what `trie` holds) lacks or
/// holds otherwise.
fn insert_rules<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], Rule>,
    held: &mut BTreeMap<TrieKey<N>, Rule>,
    new: &BTreeMap<TrieKey<N>, Rule>,
    map: &'static str,
) -> Result<(), KernelError> {
    for (&(len, addr), &rule) in new {
        if held.get(&(len, addr)) != Some(&rule) {
            trie.insert(&Key::new(u32::from(len), addr), rule, 0).map_err(map_err(map))?;
            held.insert((len, addr), rule);
        }
    }
    Ok(())
}

/// Removes the entries of `held` (what `trie` holds) that `new` lacks.
fn remove_rules<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], Rule>,
    held: &mut BTreeMap<TrieKey<N>, Rule>,
    new: &BTreeMap<TrieKey<N>, Rule>,
    map: &'static str,
) -> Result<(), KernelError> {
    let stale: Vec<TrieKey<N>> = held.keys().filter(|k| !new.contains_key(k)).copied().collect();
    for (len, addr) in stale {
        trie.remove(&Key::new(u32::from(len), addr)).map_err(map_err(map))?;
        held.remove(&(len, addr));
    }
    Ok(())
}

/// `shifts` with the masks of `bank` set to those of the regions.
fn shifts_with(shifts: u32, bank: u32, v4: &Region, v6: &Region) -> u32 {
    rule_filter::with_shift(
        rule_filter::with_shift(shifts, bank, false, v4.shift_byte()),
        bank,
        true,
        v6.shift_byte(),
    )
}
