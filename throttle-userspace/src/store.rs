//! The state directory: what was changed at run time through the admin API
//! (limits, scope, classes, what no class matches, sets, rules, controller
//! parameters) and the rule ids, kept in
//! one JSON file written atomically and read back on start; and the
//! prefixes of the sets loaded through the API, one `.netset` file each
//! under `sets/`.
//!
//! The configuration file stays the source of defaults: a limit field the API
//! never set comes from the file, and so do the scope, the classes, the
//! `[unmatched]` section and the rules until the API changes them. Once it
//! has, the state file holds that whole section. A field absent from the
//! file is one the API never changed, so files written before a section
//! could be changed still load, in the same format.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    controller::AdaptiveConfig,
    policy::{
        parse_set, Class, ClassName, LimitsPatch, Parsed, RuleSpec, Scope, SetContent, SetName, SetSpec,
        Unmatched,
    },
};

/// The state file's name in the state directory.
pub const STATE_FILE: &str = "state.json";
/// The format of the state file this build reads and writes.
pub const STATE_FORMAT: u32 = 1;

/// The id a rule's prefix was given; kept so that a source under a rule
/// keeps its bucket across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedRuleId {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<SetName>,
    pub id: u32,
}

/// The id a class was given; kept so that a class's sources keep their
/// buckets across changes of other classes and restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedClassId {
    pub name: ClassName,
    pub id: u32,
}

/// Everything the state file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// [`STATE_FORMAT`].
    pub format: u32,
    #[serde(default)]
    pub limits: LimitsPatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// The whole class list, once the API changed any class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<Class>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched: Option<Unmatched>,
    /// The whole set list, once the API changed any set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sets: Option<Vec<SetSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleSpec>>,
    #[serde(default)]
    pub rule_ids: Vec<SavedRuleId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_ids: Vec<SavedClassId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<AdaptiveConfig>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            format: STATE_FORMAT,
            limits: LimitsPatch::default(),
            scope: None,
            classes: None,
            unmatched: None,
            sets: None,
            rules: None,
            rule_ids: Vec::new(),
            class_ids: Vec::new(),
            controller: None,
        }
    }
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error(
        "the state file {} is corrupt at line {line}, column {column}: {message}; \
         fix it, or move it away to start from the configuration file alone",
        path.display()
    )]
    Corrupt { path: PathBuf, line: usize, column: usize, message: String },
    #[error(
        "the state file {} has format {found}, this throttle reads format {STATE_FORMAT}; \
         move it away to start from the configuration file alone",
        path.display()
    )]
    Format { path: PathBuf, found: u32 },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.to_owned(), source }
}

/// The state file in its directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    path: PathBuf,
}

impl Store {
    /// The store in `dir`, which is created (mode 0700) when missing.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err("create", dir))?;
        Ok(Self { dir: dir.to_owned(), path: dir.join(STATE_FILE) })
    }

    /// The state file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, or `None` when there is no state file yet.
    pub fn load(&self) -> Result<Option<State>, StoreError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &self.path)(e)),
        };
        let state: State = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        if state.format != STATE_FORMAT {
            return Err(StoreError::Format { path: self.path.clone(), found: state.format });
        }
        Ok(Some(state))
    }

    /// Writes `state` beside the state file and syncs it; nothing is in
    /// force until [`Staged::commit`] (and [`Committed::revert`] undoes
    /// that). Dropped uncommitted, the temporary file is removed.
    pub fn stage(&self, state: &State) -> Result<Staged, StoreError> {
        let mut text = serde_json::to_vec_pretty(state).expect("the state serialises");
        text.push(b'\n');
        stage_file(&self.dir, &self.path, &text)
    }

    /// Where the prefixes of the set `name` loaded through the API are kept.
    #[must_use]
    pub fn set_path(&self, name: &SetName) -> PathBuf {
        self.dir.join(SETS_DIR).join(format!("{name}.netset"))
    }

    /// Writes the prefixes of the set `name` beside its file; nothing
    /// changes until [`Staged::commit`].
    pub fn stage_set(&self, name: &SetName, content: &SetContent) -> Result<Staged, StoreError> {
        let dir = self.dir.join(SETS_DIR);
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io_err("create", &dir))?;
        let mut text = String::with_capacity(content.len() * 20);
        for net in &content.v4 {
            text.push_str(&net.to_string());
            text.push('\n');
        }
        for net in &content.v6 {
            text.push_str(&net.to_string());
            text.push('\n');
        }
        stage_file(&dir, &self.set_path(name), text.as_bytes())
    }

    /// Forgets the prefixes kept for the set `name`, if any.
    pub fn remove_set(&self, name: &SetName) -> Result<(), StoreError> {
        let path = self.set_path(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &path)(e)),
            _ => Ok(()),
        }
    }
}

/// The state directory's folder of the sets loaded through the API.
const SETS_DIR: &str = "sets";

/// Reads a set from a `.netset` file.
pub fn read_netset(path: &Path) -> Result<Parsed, StoreError> {
    let text = fs::read_to_string(path).map_err(io_err("read the set file", path))?;
    Ok(parse_set(text.lines()))
}

/// Writes `bytes` beside `path` (in `dir`) and syncs them, to be renamed
/// over `path` by [`Staged::commit`].
fn stage_file(dir: &Path, path: &Path, bytes: &[u8]) -> Result<Staged, StoreError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let staged = Staged {
        tmp: dir.join(format!(".{name}.tmp")),
        path: path.to_owned(),
        dir: dir.to_owned(),
        done: false,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staged.tmp)
        .map_err(io_err("create", &staged.tmp))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io_err("write", &staged.tmp))?;
    Ok(staged)
}

/// A file of the state directory written but not yet in force.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    done: bool,
}

impl Staged {
    /// Renames the staged file over the state file and syncs the directory,
    /// so the change survives a crash. What the file held before is kept
    /// in memory, for [`Committed::revert`].
    pub fn commit(mut self) -> Result<Committed, StoreError> {
        let previous = match fs::read(&self.path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("read", &self.path)(e)),
        };
        fs::rename(&self.tmp, &self.path).map_err(io_err("rename", &self.path))?;
        self.done = true;
        sync_dir(&self.dir)?;
        Ok(Committed { path: self.path.clone(), dir: self.dir.clone(), previous })
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(io_err("sync", dir))
}

/// A file of the state directory put in force by [`Staged::commit`], with
/// what it held before.
#[derive(Debug)]
pub struct Committed {
    path: PathBuf,
    dir: PathBuf,
    /// `None`: there was no file.
    previous: Option<Vec<u8>>,
}

impl Committed {
    /// Puts back what the file held before the commit (written, synced and
    /// renamed into place as the commit was), or removes it when there was
    /// none: for a change the kernel then refused.
    pub fn revert(self) -> Result<(), StoreError> {
        if let Some(bytes) = &self.previous {
            return stage_file(&self.dir, &self.path, bytes)?.commit().map(drop);
        }
        fs::remove_file(&self.path).map_err(io_err("remove", &self.path))?;
        sync_dir(&self.dir)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Rate;

    #[test]
    fn a_missing_file_is_no_state_and_a_saved_one_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        assert_eq!(store.load().unwrap(), None);
        let state = State {
            limits: LimitsPatch { rate: Some(Rate::per_second(5)), ..LimitsPatch::default() },
            rules: Some(vec![]),
            classes: Some(vec![]),
            unmatched: Some(Unmatched { action: crate::policy::UnmatchedAction::Pass }),
            ..State::default()
        };
        store.stage(&state).unwrap().commit().unwrap();
        assert_eq!(store.load().unwrap(), Some(state));
    }

    #[test]
    fn a_file_of_the_same_format_without_classes_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(store.path(), "{\"format\": 1, \"limits\": {\"rate\": 5}, \"rules\": []}").unwrap();
        let state = store.load().unwrap().unwrap();
        assert_eq!((state.classes, state.unmatched), (None, None));
        assert_eq!(state.rules, Some(vec![]));
    }

    #[test]
    fn an_uncommitted_stage_leaves_the_file_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = State {
            limits: LimitsPatch { rate: Some(Rate::per_second(5)), ..LimitsPatch::default() },
            ..State::default()
        };
        store.stage(&first).unwrap().commit().unwrap();
        let second = State {
            limits: LimitsPatch { rate: Some(Rate::per_second(6)), ..LimitsPatch::default() },
            ..State::default()
        };
        drop(store.stage(&second).unwrap());
        assert_eq!(store.load().unwrap(), Some(first));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "the temporary file is gone");
    }

    #[test]
    fn a_revert_puts_back_what_the_file_held_or_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = State {
            limits: LimitsPatch { rate: Some(Rate::per_second(5)), ..LimitsPatch::default() },
            ..State::default()
        };
        store.stage(&first).unwrap().commit().unwrap().revert().unwrap();
        assert_eq!(store.load().unwrap(), None, "there was no file: it is gone again");
        store.stage(&first).unwrap().commit().unwrap();
        let before = fs::read(store.path()).unwrap();
        let second = State {
            limits: LimitsPatch { rate: Some(Rate::per_second(6)), ..LimitsPatch::default() },
            ..State::default()
        };
        let committed = store.stage(&second).unwrap().commit().unwrap();
        assert_eq!(store.load().unwrap(), Some(second));
        committed.revert().unwrap();
        assert_eq!(fs::read(store.path()).unwrap(), before, "the file holds what it held");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
    }

    #[test]
    fn a_corrupt_file_is_reported_with_its_path_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(store.path(), "{\n  \"format\": 1,\n  \"limits\": {\"rate\": \"fast\"}\n}\n").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains(&store.path().display().to_string()), "{err}");
        assert!(err.contains("line 3"), "{err}");
        fs::write(store.path(), "{\"format\": 1, \"limitz\": {}}").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("unknown field `limitz`"));
        fs::write(store.path(), "{\"format\": 7}").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("has format 7"));
    }
}
