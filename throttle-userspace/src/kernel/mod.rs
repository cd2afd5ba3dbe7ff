//! The kernel layer: the policy compiled into a plan of every map word
//! ([`plan`], pure), and the loaded XDP program that writes plans into its
//! maps, attaches to interfaces and outlives the daemon through pins.
//!
//! - `plan.rs`, `rule_filter.rs`: policy -> plan, testable without root;
//! - `maps.rs`: loading or adopting the program and its maps, reads;
//! - `write.rs`: a plan into the maps, in the order that keeps verdicts whole;
//! - `links.rs`: attaching, taking over pinned links, detaching;
//! - `pins.rs`: the pin directory and the adoption checks;
//! - `sets.rs`: the IP sets' prefixes into their tries, in batches;
//! - `chain.rs`: the program that what passes continues into (`--chain`);
//! - `sys.rs`: the system calls aya does not wrap.
//!
//! The control plane sees all of it through [`Kernel`].

mod chain;
mod error;
pub mod explain;
mod links;
mod maps;
mod pins;
pub mod plan;
pub mod rule_filter;
mod sets;
mod sys;
mod table;
mod write;

use std::{fmt, sync::Arc};

use throttle_common::{reason, Bucket, BucketKey};

pub use self::{
    chain::{ChainError, Chained},
    error::KernelError,
    maps::{bucket_key, masked_key, BucketWalker, Dataplane, EventStats, Options, ProgramLogger},
    plan::{compile, Plan, SetPlace},
    sets::{SetLoader, SetTries},
    sys::{coarse_resolution_ns, grace_period, if_index, missing_capabilities, monotonic_ns},
    table::BucketTable,
};

/// How the XDP program is attached.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic when the driver has none.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode: works everywhere, costs more per packet.
    Generic,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Generic => "generic",
        })
    }
}

/// An attachment of the program to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub iface: String,
    /// "native" or "generic": what the kernel accepted.
    pub mode: &'static str,
    /// Whether a pinned link left by an earlier daemon was taken over (its
    /// program replaced in place) rather than a new one attached.
    pub adopted: bool,
}

/// The adaptive controller's hold on newcomers ([`Kernel::set_newcomers`]):
/// under a limit it moves, a source whose bucket was made at or after
/// `known_before` ([`throttle_common::table::born_of`]) gets `share` of it,
/// in 1/`SHARE_ONE`ths (0: all of it, no reserve in force).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NewcomerShare {
    pub known_before: u32,
    pub share: u32,
}

/// How an attachment stands with its interface ([`Kernel::presence`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The interface attached to is there, and so is the program.
    Attached,
    /// No interface has that name (deleted, or moved to another namespace):
    /// nothing is metered there.
    Missing,
    /// An interface of that name is there again, a new one, which the
    /// program is not attached to: [`Kernel::reattach`].
    Returned,
}

/// Verdict counters by [`reason`] slot.
pub type Counters = [u64; reason::COUNT as usize];

/// The interface and the XDP mode that counters of
/// [`Dataplane::counters_by_interface`] are reported under: `other`, with no
/// mode, for the packets of interfaces without counters of their own.
#[must_use]
pub fn counters_label(attachment: Option<&Attachment>) -> (String, String) {
    attachment.map_or_else(|| ("other".to_owned(), String::new()), |a| (a.iface.clone(), a.mode.to_owned()))
}

/// Walks every tracked bucket on a handle of its own, so that a walk over a
/// million sources holds no lock that the API or the controller waits on.
pub type BucketWalk = Arc<dyn Fn(&mut dyn FnMut(&BucketKey, &Bucket)) + Send + Sync>;

/// What the control plane needs from the data path. [`Dataplane`] is the
/// real one; tests use an in-memory one.
pub trait Kernel: Send {
    /// Puts a plan in force.
    fn write(&mut self, plan: &Plan) -> Result<(), KernelError>;
    /// The resolution of the clock the data path meters long bursts with
    /// (ns, 0: unknown), which the plan's limits are compiled for.
    fn coarse_tick_ns(&self) -> u64;
    /// Now on the data path's clock, in ticks of the GCRA (1/16 ns of
    /// `CLOCK_MONOTONIC`).
    fn now_ticks(&self) -> u64;
    fn counters(&self) -> Result<Counters, KernelError>;
    /// The counters of each attached interface, and of any other (`None`)
    /// when it counted something.
    fn counters_by_interface(&self) -> Result<Vec<(Option<Attachment>, Counters)>, KernelError>;
    fn bucket(&self, key: &BucketKey) -> Result<Option<Bucket>, KernelError>;
    fn remove_bucket(&mut self, key: &BucketKey) -> Result<bool, KernelError>;
    /// Fleet mode: the part of its limit this host enforces for each
    /// source of `shares` (in 1/`SHARE_ONE`ths, written in its bucket where
    /// the program reads it) and for every other source (`default_share`;
    /// `SHARE_ONE` or 0: all of it). Sources of the last call left out of
    /// this one get their whole limit back. How many of `shares` are
    /// tracked.
    fn set_shares(&mut self, default_share: u32, shares: &[(BucketKey, u32)]) -> Result<usize, KernelError>;
    /// The adaptive controller's reserve for known sources: under a limit
    /// it moves, a source whose bucket was made at or after
    /// `known_before` gets `share` of it.
    fn set_newcomers(&mut self, newcomers: NewcomerShare) -> Result<(), KernelError>;
    /// Fleet mode: raises the TAT of each source of `tats` to at least the
    /// given one (ticks), for the debt its low-rate limit ran up on other
    /// nodes. How many are tracked.
    fn raise_tats(&mut self, tats: &[(BucketKey, u64)]) -> usize;
    /// A walk over every tracked bucket, on a handle that outlives the
    /// borrow of the kernel.
    fn bucket_walk(&self) -> Result<BucketWalk, KernelError>;
    /// A writer of the set tries, on handles that outlive the borrow of the
    /// kernel.
    fn set_loader(&self) -> Result<Box<dyn SetLoader>, KernelError>;
    /// What became of the data path's events.
    fn event_stats(&self) -> Result<EventStats, KernelError>;
    /// The packets each allow or deny rule of `ids` decided.
    fn rule_counts(&self, ids: &[u32]) -> Result<Vec<u64>, KernelError>;
    /// Starts (`Some`) or stops a capture of dropped packets.
    fn set_capture(&mut self, capture: Option<throttle_common::CaptureConfig>) -> Result<(), KernelError>;
    /// The set slots the rules in force name (an earlier daemon's, when
    /// its maps were adopted and nothing was written yet).
    fn set_slots_in_use(&self) -> Vec<u32>;
    fn attachments(&self) -> Vec<Attachment>;
    /// The program what passes continues into (`--chain`), if one does.
    fn chained(&self) -> Option<Chained> {
        None
    }
    fn max_sources(&self) -> u32;
    /// The version of the configuration in force.
    fn version(&self) -> u64;
    /// Attaches to `iface` (or takes over the pinned link there).
    fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<Attachment, KernelError>;
    /// How each attachment stands with its interface now.
    fn presence(&self) -> Vec<(String, Presence)>;
    /// Attaches again, in the mode it had, to an interface of the name of
    /// one attached to that was made again.
    fn reattach(&mut self, iface: &str) -> Result<Attachment, KernelError>;
    /// Detaches what a previous daemon attached to interfaces not in `keep`.
    fn release_others(&mut self, keep: &[String]) -> Result<Vec<String>, KernelError>;
    /// Undoes a start that failed: what this process attached and pinned
    /// goes, what an earlier daemon left stays.
    fn abandon(&mut self) -> Result<(), KernelError>;
    /// Detaches and unpins everything, or with `keep_pins` leaves it all
    /// attached and pinned for the next daemon.
    fn release(&mut self, keep_pins: bool) -> Result<(), KernelError>;
}

impl Kernel for Dataplane {
    fn write(&mut self, plan: &Plan) -> Result<(), KernelError> {
        Dataplane::write(self, plan)
    }

    fn coarse_tick_ns(&self) -> u64 {
        coarse_resolution_ns()
    }

    fn now_ticks(&self) -> u64 {
        throttle_common::gcra::ticks_from_ns(monotonic_ns())
    }

    fn counters(&self) -> Result<Counters, KernelError> {
        Dataplane::counters(self)
    }

    fn counters_by_interface(&self) -> Result<Vec<(Option<Attachment>, Counters)>, KernelError> {
        Dataplane::counters_by_interface(self)
    }

    fn bucket(&self, key: &BucketKey) -> Result<Option<Bucket>, KernelError> {
        Dataplane::bucket(self, key)
    }

    fn remove_bucket(&mut self, key: &BucketKey) -> Result<bool, KernelError> {
        Dataplane::remove_bucket(self, key)
    }

    fn set_shares(&mut self, default_share: u32, shares: &[(BucketKey, u32)]) -> Result<usize, KernelError> {
        Dataplane::set_shares(self, default_share, shares)
    }

    fn set_newcomers(&mut self, newcomers: NewcomerShare) -> Result<(), KernelError> {
        Dataplane::set_newcomers(self, newcomers)
    }

    fn raise_tats(&mut self, tats: &[(BucketKey, u64)]) -> usize {
        tats.iter().filter(|(key, tat)| self.table().raise_tat(key, *tat)).count()
    }

    fn bucket_walk(&self) -> Result<BucketWalk, KernelError> {
        let walker = self.bucket_walker()?;
        Ok(Arc::new(move |f| walker.for_each(f)))
    }

    fn set_loader(&self) -> Result<Box<dyn SetLoader>, KernelError> {
        Ok(Box::new(self.set_tries()?))
    }

    fn event_stats(&self) -> Result<EventStats, KernelError> {
        Dataplane::event_stats(self)
    }

    fn set_capture(&mut self, capture: Option<throttle_common::CaptureConfig>) -> Result<(), KernelError> {
        Dataplane::set_capture(self, capture)
    }

    fn rule_counts(&self, ids: &[u32]) -> Result<Vec<u64>, KernelError> {
        Dataplane::rule_counts(self, ids)
    }

    fn set_slots_in_use(&self) -> Vec<u32> {
        self.held_plan().set_rules.iter().map(|r| r.slot).collect()
    }

    fn attachments(&self) -> Vec<Attachment> {
        Dataplane::attachments(self).to_vec()
    }

    fn chained(&self) -> Option<Chained> {
        Dataplane::chained(self).cloned()
    }

    fn max_sources(&self) -> u32 {
        Dataplane::max_sources(self)
    }

    fn version(&self) -> u64 {
        Dataplane::version(self)
    }

    fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<Attachment, KernelError> {
        Dataplane::attach(self, iface, mode).cloned()
    }

    fn presence(&self) -> Vec<(String, Presence)> {
        Dataplane::presence(self)
    }

    fn reattach(&mut self, iface: &str) -> Result<Attachment, KernelError> {
        Dataplane::reattach(self, iface).cloned()
    }

    fn release_others(&mut self, keep: &[String]) -> Result<Vec<String>, KernelError> {
        Dataplane::release_others(self, keep)
    }

    fn abandon(&mut self) -> Result<(), KernelError> {
        Dataplane::abandon(self)
    }

    fn release(&mut self, keep_pins: bool) -> Result<(), KernelError> {
        Dataplane::release(self, keep_pins)
    }
}
