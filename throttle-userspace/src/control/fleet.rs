//! The fleet's policy document: in fleet mode (`[cluster]`), the policy the
//! API changes is one versioned document shared by every node.
//!
//! A change made through any node's API is validated here first, written
//! to the fleet with a compare-and-set on the version it was made against
//! ([`Publisher::publish`]), and only then put in force on this node: a
//! change another node made first is refused as a conflict, with the
//! version that won, and nothing changes. A document another node wrote is
//! put in force with [`Control::apply_fleet`]: validated whole over this
//! node's configuration file (which gives what the document does not set),
//! or refused and the running policy kept.
//!
//! The document holds the limits, the scope, the classes, what no class
//! matches, the rules and the controller's parameters (its latency source
//! aside: each node probes its own service). Rules name sets by name: the sets themselves (their
//! prefixes) stay each node's own, from its files or its API, so a document
//! whose rules name a set a node lacks does not validate there.

use serde::{Deserialize, Serialize};

use super::{effective, ChangeError, Control};
use crate::{
    controller::{AdaptiveConfig, ParamsUpdate},
    policy::{Class, Invalid, LimitsPatch, RuleSpec, Scope, Unmatched},
    store::State,
};

/// The format of the document this build reads and writes.
pub const DOC_FORMAT: u32 = 1;

/// The fleet's policy: each section the fleet sets, the others left to each
/// node's configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetDoc {
    /// [`DOC_FORMAT`].
    pub format: u32,
    /// The limit fields the fleet sets.
    #[serde(default)]
    pub limits: LimitsPatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<Class>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched: Option<Unmatched>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleSpec>>,
    /// The controller's parameters as `PUT /v1/controller` takes them,
    /// without `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<ParamsUpdate>,
}

/// The controller's parameters the fleet shares: all but the latency source.
#[must_use]
pub fn controller_params(config: &AdaptiveConfig) -> ParamsUpdate {
    let mut params = match serde_json::to_value(config).expect("the parameters serialise") {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    params.remove("source");
    ParamsUpdate(params)
}

impl FleetDoc {
    /// The sections of a state that the fleet shares.
    #[must_use]
    pub fn of(state: &State) -> Self {
        Self {
            format: DOC_FORMAT,
            limits: state.limits,
            scope: state.scope.clone(),
            classes: state.classes.clone(),
            unmatched: state.unmatched,
            rules: state.rules.clone(),
            controller: state.controller.as_ref().map(controller_params),
        }
    }

    /// `state` with the fleet's sections in place of its own, and
    /// `controller` (the fleet's parameters over this node's own) when the
    /// document sets them.
    #[must_use]
    pub fn over(&self, state: &State, controller: Option<AdaptiveConfig>) -> State {
        State {
            limits: self.limits,
            scope: self.scope.clone(),
            classes: self.classes.clone(),
            unmatched: self.unmatched,
            rules: self.rules.clone(),
            controller: controller.or_else(|| state.controller.clone()),
            ..state.clone()
        }
    }

    /// The controller's parameters of this document over `base` (this
    /// node's, whose latency source they keep), validated; `None` when the
    /// document sets none.
    pub fn controller_over(&self, base: &AdaptiveConfig) -> Result<Option<AdaptiveConfig>, Invalid> {
        let Some(params) = &self.controller else {
            return Ok(None);
        };
        params.apply_to(base).map(Some).map_err(|err| match err {
            crate::policy::ParseError::Invalid(mut invalid) => {
                invalid.key = crate::policy::key("fleet.controller", &invalid.key);
                invalid
            }
            crate::policy::ParseError::Format { path, source } => {
                Invalid::new(crate::policy::key("fleet.controller", &path), "(document)", source.to_string())
            }
        })
    }

    /// Reads a document as the fleet holds it (JSON); a value that does not
    /// fit is refused by its key, under `fleet`.
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Invalid::new("fleet", "(document)", format!("not JSON: {e}")))?;
        let doc: Self = crate::policy::parse(value, "fleet").map_err(|err| match err {
            crate::policy::ParseError::Invalid(invalid) => invalid,
            crate::policy::ParseError::Format { path, source } => {
                Invalid::new(crate::policy::key("fleet", &path), "(document)", source.to_string())
            }
        })?;
        if doc.format != DOC_FORMAT {
            return Err(Invalid::new(
                "fleet.format",
                doc.format,
                format!("this throttle reads format {DOC_FORMAT}"),
            ));
        }
        Ok(doc)
    }
}

/// Why the fleet did not take a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Another change was written first: the document is at `current`.
    #[error("another change was made first: the fleet's policy is at version {current}")]
    Conflict { current: u64 },
    /// The fleet's store did not answer in time, or refused.
    #[error("the fleet's policy could not be written: {0}")]
    Unavailable(String),
}

/// Where the fleet's document is written: a compare-and-set on its version.
pub trait Publisher: Send {
    /// Writes `doc` as the version after `expected`, if the document is
    /// still at `expected`; the new version. Blocking, with a deadline.
    fn publish(&self, doc: &FleetDoc, expected: u64) -> Result<u64, PublishError>;
}

/// What a document from the fleet did on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Now in force.
    Changed,
    /// The node runs that version already.
    Current,
}

impl Control {
    /// Fleet mode: API changes go through `publisher`; `version` is the
    /// fleet's document this node runs (0: none yet).
    pub fn join_fleet(&mut self, publisher: Box<dyn Publisher>, version: u64) {
        self.fleet = Some(publisher);
        self.fleet_version = version;
    }

    /// Notes that the fleet's document `version` did not validate here: a
    /// change made on this node is then made against it, so that a
    /// document no node can run can be replaced.
    pub fn refuse_fleet(&mut self, version: u64) {
        self.fleet_refused = Some(version);
    }

    /// The per-second rate of every limit whose buckets carry that `rule`
    /// word: the default limit (0), each limit rule, each limit of each class.
    #[must_use]
    pub fn limit_rates(&self) -> std::collections::HashMap<u32, f64> {
        let mut rates: std::collections::HashMap<u32, f64> =
            self.base_rates().into_iter().map(|(id, rate)| (id, rate.per_sec())).collect();
        for (&id, class) in self.class_ids.iter().zip(&self.policy.classes) {
            for (slot, limit) in (0u32..).zip(&class.limits) {
                rates.insert(throttle_common::class_owner(id, slot), limit.rate.per_sec());
            }
        }
        rates
    }

    /// The limits under one a second (written per minute, hour or day),
    /// by the `rule` word of their buckets, with their interval and their
    /// tolerance (burst times interval) in microseconds: the fleet merges
    /// their GCRA debt instead of sharing their rate.
    #[must_use]
    pub fn low_rate_limits(&self) -> std::collections::HashMap<u32, super::super::runtime::fleet::LowRate> {
        let mut limits = std::collections::HashMap::new();
        let mut add = |owner: u32, rate: crate::policy::Rate, burst: u64| {
            if rate.per_sec() < 1.0 {
                let interval_us = 1e6 / rate.per_sec();
                #[expect(clippy::cast_precision_loss, reason = "a burst far below 2^52")]
                let tolerance_us = interval_us * burst as f64;
                limits.insert(owner, super::super::runtime::fleet::LowRate { interval_us, tolerance_us });
            }
        };
        add(0, self.policy.limits.rate, self.policy.limits.burst);
        for (&id, spec) in self.rule_ids.iter().zip(&self.policy.rules) {
            if let Some(limit) = spec.limit() {
                add(id, limit.rate, limit.burst);
            }
        }
        for (&id, class) in self.class_ids.iter().zip(&self.policy.classes) {
            for (slot, limit) in (0u32..).zip(&class.limits) {
                add(throttle_common::class_owner(id, slot), limit.rate, limit.burst());
            }
        }
        limits
    }

    /// The version of the fleet's document in force here (0: none, or not
    /// in fleet mode).
    #[must_use]
    pub fn fleet_version(&self) -> u64 {
        self.fleet_version
    }

    /// The document this node's policy corresponds to.
    #[must_use]
    pub fn fleet_doc(&self) -> FleetDoc {
        FleetDoc::of(&self.state)
    }

    /// Puts the fleet's document `version` in force, over this node's
    /// configuration file; a document that does not validate is refused
    /// and the running policy stays.
    ///
    /// `base` is the controller's configuration the document's parameters
    /// go over (the running controller's); the result is saved with the rest.
    pub fn apply_fleet(
        &mut self,
        doc: &FleetDoc,
        version: u64,
        base: &AdaptiveConfig,
    ) -> Result<Applied, ChangeError> {
        if version == self.fleet_version && FleetDoc::of(&self.state) == *doc {
            return Ok(Applied::Current);
        }
        let controller = doc.controller_over(base)?;
        let state = doc.over(&self.state, controller);
        let policy = effective(&self.base, &state);
        // Named under `fleet`: the document is where the bad value is.
        policy.validate().map_err(|mut invalid| {
            invalid.key = format!("fleet.{}", invalid.key);
            invalid
        })?;
        self.switch(policy, state, None)?;
        self.fleet_version = version;
        self.fleet_refused = None;
        Ok(Applied::Changed)
    }

    /// In fleet mode, writes the document of `state` to the fleet before it
    /// is put in force here; outside it, nothing. The policy is validated
    /// first, so that the fleet only ever holds a policy that validates.
    pub(super) fn publish(&mut self, state: &State) -> Result<Option<u64>, ChangeError> {
        let Some(publisher) = &self.fleet else {
            return Ok(None);
        };
        effective(&self.base, state).validate()?;
        let expected = self.fleet_refused.filter(|&r| r > self.fleet_version).unwrap_or(self.fleet_version);
        let version = publisher.publish(&FleetDoc::of(state), expected)?;
        self.fleet_refused = None;
        Ok(Some(version))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{
        control::fake::FakeKernel,
        policy::{Action, Limits, Policy, Rate},
    };

    /// A fleet in memory: a document and its version, written by
    /// compare-and-set.
    #[derive(Clone, Default)]
    struct Fleet(Arc<Mutex<(u64, Option<FleetDoc>, bool)>>);

    impl Publisher for Fleet {
        fn publish(&self, doc: &FleetDoc, expected: u64) -> Result<u64, PublishError> {
            let mut fleet = self.0.lock().unwrap();
            if fleet.2 {
                return Err(PublishError::Unavailable("connection refused".into()));
            }
            if fleet.0 != expected {
                return Err(PublishError::Conflict { current: fleet.0 });
            }
            fleet.0 += 1;
            fleet.1 = Some(doc.clone());
            Ok(fleet.0)
        }
    }

    fn node(fleet: &Fleet, kernel: &FakeKernel) -> Control {
        let base = Policy { limits: Limits { burst: 77, ..Limits::default() }, ..Policy::default() };
        let mut control = Control::new(Box::new(kernel.clone()), base, None).unwrap();
        control.join_fleet(Box::new(fleet.clone()), 0);
        control
    }

    fn deny(cidr: &str) -> RuleSpec {
        RuleSpec::new(cidr.parse().unwrap(), Action::Deny)
    }

    #[test]
    fn a_change_reaches_the_fleet_and_another_node_takes_it_over_its_own_file() {
        let fleet = Fleet::default();
        let (ka, kb) = (FakeKernel::default(), FakeKernel::default());
        let mut a = node(&fleet, &ka);
        let mut b = node(&fleet, &kb);
        a.add_rule(deny("192.0.2.0/24")).unwrap();
        a.patch_limits(&LimitsPatch { rate: Some(Rate::per_second(9)), ..LimitsPatch::default() }).unwrap();
        assert_eq!(a.fleet_version(), 2);
        let (version, doc) = {
            let f = fleet.0.lock().unwrap();
            (f.0, f.1.clone().unwrap())
        };
        let base = AdaptiveConfig::default();
        assert_eq!(b.apply_fleet(&doc, version, &base).unwrap(), Applied::Changed);
        assert_eq!(b.apply_fleet(&doc, version, &base).unwrap(), Applied::Current);
        assert_eq!(b.fleet_version(), 2);
        assert_eq!(b.rules().len(), 1);
        assert_eq!(b.limits().rate, Rate::per_second(9));
        assert_eq!(b.limits().burst, 77, "what the document does not set comes from the file");
    }

    #[test]
    fn the_loser_of_two_changes_gets_the_winning_version_and_changes_nothing() {
        let fleet = Fleet::default();
        let (ka, kb) = (FakeKernel::default(), FakeKernel::default());
        let mut a = node(&fleet, &ka);
        let mut b = node(&fleet, &kb);
        a.add_rule(deny("192.0.2.0/24")).unwrap();
        let writes = kb.0.lock().unwrap().writes;
        let err = b.add_rule(deny("198.51.100.0/24")).unwrap_err();
        assert!(matches!(err, ChangeError::Fleet(PublishError::Conflict { current: 1 })), "{err}");
        assert!(b.rules().is_empty());
        assert_eq!(kb.0.lock().unwrap().writes, writes, "nothing written to the maps");
        fleet.0.lock().unwrap().2 = true;
        let err = a.add_rule(deny("203.0.113.0/24")).unwrap_err();
        assert!(matches!(err, ChangeError::Fleet(PublishError::Unavailable(_))), "{err}");
        assert_eq!(a.rules().len(), 1, "a change the fleet did not take is not made here either");
    }

    #[test]
    fn the_controllers_parameters_travel_and_each_node_keeps_its_latency_source() {
        let fleet = Fleet::default();
        let (ka, kb) = (FakeKernel::default(), FakeKernel::default());
        let mut a = node(&fleet, &ka);
        let mut b = node(&fleet, &kb);
        let mut params = serde_json::Map::new();
        params.insert("floor".into(), serde_json::json!(0.3));
        let tuned = ParamsUpdate(params).apply_to(&AdaptiveConfig::default()).unwrap();
        a.save_controller(tuned).unwrap();
        let doc = fleet.0.lock().unwrap().1.clone().unwrap();
        let controller = doc.controller.as_ref().expect("the parameters are in the document");
        assert!(controller.0.get("source").is_none(), "not the latency source");
        let own: AdaptiveConfig = serde_json::from_value(serde_json::json!({
            "source": {"kind": "tcp", "address": "127.0.0.1:5432"}
        }))
        .unwrap();
        b.apply_fleet(&doc, 1, &own).unwrap();
        let saved = b.saved_controller().unwrap();
        assert!((saved.floor - 0.3).abs() < f64::EPSILON, "the fleet's floor");
        assert_eq!(saved.source, own.source, "its own latency source");
        fleet.0.lock().unwrap().2 = true;
        assert!(matches!(a.save_controller(AdaptiveConfig::default()), Err(ChangeError::Fleet(_))));
        assert!((a.saved_controller().unwrap().floor - 0.3).abs() < f64::EPSILON, "not saved either");
    }

    #[test]
    fn a_bad_change_never_reaches_the_fleet() {
        let fleet = Fleet::default();
        let kernel = FakeKernel::default();
        let mut a = node(&fleet, &kernel);
        a.add_rule(deny("10.0.0.0/8")).unwrap();
        assert!(matches!(a.add_rule(deny("10.0.0.0/8")), Err(ChangeError::DuplicateRule { .. })));
        assert_eq!(fleet.0.lock().unwrap().0, 1);
    }

    #[test]
    fn a_document_that_does_not_validate_is_refused_by_its_key_and_the_running_policy_stays() {
        let fleet = Fleet::default();
        let kernel = FakeKernel::default();
        let mut b = node(&fleet, &kernel);
        let good =
            FleetDoc { format: DOC_FORMAT, rules: Some(vec![deny("192.0.2.0/24")]), ..FleetDoc::default() };
        let base = AdaptiveConfig::default();
        b.apply_fleet(&good, 3, &base).unwrap();
        let writes = kernel.0.lock().unwrap().writes;
        for (text, needle) in [
            (r#"{"format": 1, "limits": {"rate": 0}}"#, "`fleet.limits.rate` = 0"),
            (
                r#"{"format": 1, "rules": [{"cidr": "10.0.0.1/8", "action": "deny"}]}"#,
                "`fleet.rules[0].cidr`",
            ),
            (r#"{"format": 1, "rules": [{"set": "ghost", "action": "deny"}]}"#, "`fleet.rules[0].set`"),
            (r#"{"format": 2}"#, "`fleet.format` = 2"),
            (r#"{"format": 1, "controller": {"floor": 0}}"#, "`fleet.controller.floor` = 0"),
            (r#"{"format": 1, "limitz": {}}"#, "unknown field `limitz`"),
            ("not json", "not JSON"),
        ] {
            let err = match FleetDoc::parse(text) {
                Err(invalid) => invalid.to_string(),
                Ok(doc) => b.apply_fleet(&doc, 4, &base).unwrap_err().to_string(),
            };
            assert!(err.contains(needle), "{text}: {err} lacks {needle}");
        }
        assert_eq!(b.fleet_version(), 3);
        assert_eq!(b.rules().len(), 1);
        assert_eq!(kernel.0.lock().unwrap().writes, writes, "nothing written to the maps");
    }
}
