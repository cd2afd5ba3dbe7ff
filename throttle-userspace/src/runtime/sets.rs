//! Changes of the IP sets: the prefixes go into the kernel without the
//! control plane's lock (a million take seconds), serialised by a lock of
//! their own; only the switch to them takes the control plane
//! ([`crate::control`]'s set steps).

use std::{sync::Arc, time::Instant};

use super::{lock, Runtime};
use crate::{
    control::{read_set, ChangeError, Retired, SetLoad, StagedSet},
    kernel::SetLoader,
    policy::{Invalid, Parsed, Policy, SetContent, SetName},
};

/// Undoes the loads of a change that did not happen.
fn unload(loader: &mut dyn SetLoader, slots: &[(u32, Arc<SetContent>)]) {
    for (slot, content) in slots {
        if let Err(err) = loader.remove(*slot, content) {
            tracing::warn!(slot, "prefixes of a refused set change left in their slot: {err}");
        }
    }
}

impl Runtime {
    /// Removes what a change retired, and notes the memory the sets hold.
    fn finish(&self, loader: &mut dyn SetLoader, retired: Retired) {
        if let Err(err) = retired.remove(loader) {
            tracing::warn!("the previous prefixes of a set could not all be removed: {err}");
        }
        let bytes = loader.memory_bytes();
        self.control(|c| c.note_set_memory(bytes));
    }

    /// Runs `f` with the set loader, one change at a time.
    fn with_loader<R>(
        &self,
        f: impl FnOnce(&mut dyn SetLoader) -> Result<R, ChangeError>,
    ) -> Result<R, ChangeError> {
        let mut guard = lock(&self.0.sets);
        let loader =
            guard.as_mut().ok_or_else(|| Invalid::new("sets", "(none)", "this daemon cannot change sets"))?;
        f(&mut **loader)
    }

    /// `PUT /v1/sets/{name}`: loads a set, new or a new version of one, and
    /// switches every packet to it at once. Blocking.
    pub fn load_set(&self, name: SetName, parsed: Parsed) -> Result<SetLoad, ChangeError> {
        parsed.content.validate(&format!("sets.{name}"))?;
        self.with_loader(|loader| {
            let slot = self.control(|c| c.slot_for(&name, &[]))?;
            let content = Arc::new(parsed.content);
            let started = Instant::now();
            if let Err(err) = loader.insert(slot, &content) {
                unload(loader, &[(slot, content)]);
                return Err(err.into());
            }
            let load_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let staged = StagedSet { name: name.clone(), slot, content: Arc::clone(&content), refused: parsed.refused };
            let (created, retired) = match self.control(|c| c.put_set(staged)) {
                Ok(done) => done,
                Err(err) => {
                    unload(loader, &[(slot, content)]);
                    return Err(err);
                }
            };
            self.finish(loader, retired);
            tracing::info!(set = %name, prefixes = content.len(), refused = parsed.refused, load_ms, "set loaded");
            Ok(SetLoad {
                name,
                created,
                loaded: content.len(),
                refused: parsed.refused,
                first_refused: parsed.first_refused,
                load_ms,
            })
        })
    }

    /// `DELETE /v1/sets/{name}`. Blocking.
    pub fn remove_set(&self, name: &SetName) -> Result<(), ChangeError> {
        self.with_loader(|loader| {
            let retired = self.control(|c| c.remove_set(name))?;
            self.finish(loader, retired);
            tracing::info!(set = %name, "set removed");
            Ok(())
        })
    }

    /// SIGHUP: puts a new configuration file's policy in force, with its
    /// sets read again from their files (those whose prefixes changed are
    /// loaded anew). A file that cannot be read changes nothing. Blocking.
    pub fn reload(&self, base: Policy) -> Result<(), ChangeError> {
        self.with_loader(|loader| {
            let (specs, current): (Vec<_>, Vec<_>) = self.control(|c| {
                let specs = c.preview(&base).sets;
                let current = specs.iter().map(|s| c.set_content(&s.name)).collect();
                (specs, current)
            });
            let mut parsed = Vec::new();
            for (spec, current) in specs.iter().zip(current) {
                if spec.file.is_none() {
                    continue;
                }
                let set = read_set(spec, None).map_err(ChangeError::Store)?;
                set.content.validate(&format!("sets.{}", spec.name))?;
                if current.as_deref() != Some(&set.content) {
                    parsed.push((spec.name.clone(), set));
                }
            }
            let mut staged: Vec<StagedSet> = Vec::new();
            let mut inserted: Vec<(u32, Arc<SetContent>)> = Vec::new();
            for (name, set) in parsed {
                let slots: Vec<u32> = staged.iter().map(|s| s.slot).collect();
                let slot = match self.control(|c| c.slot_for(&name, &slots)) {
                    Ok(slot) => slot,
                    Err(err) => {
                        unload(loader, &inserted);
                        return Err(err);
                    }
                };
                let content = Arc::new(set.content);
                inserted.push((slot, Arc::clone(&content)));
                if let Err(err) = loader.insert(slot, &content) {
                    unload(loader, &inserted);
                    return Err(err.into());
                }
                tracing::info!(set = %name, prefixes = content.len(), refused = set.refused, "set read again");
                staged.push(StagedSet { name, slot, content, refused: set.refused });
            }
            match self.control(|c| c.reload_with_sets(base, staged)) {
                Ok(retired) => {
                    self.finish(loader, retired);
                    Ok(())
                }
                Err(err) => {
                    unload(loader, &inserted);
                    Err(err)
                }
            }
        })
    }
}
