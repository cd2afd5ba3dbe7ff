//! throttle: an XDP ingress throttle. This crate is the user-space side.
//!
//! Its modules are layered, each knowing only those before it:
//!
//! ```text
//! policy <- controller <- kernel <- store <- control <- runtime <- api <- settings <- client, daemon
//! ```
//!
//! - [`policy`]: the domain types (limits, rules, scope) and their validation;
//! - [`controller`]: the adaptive controller, fed samples and a clock;
//! - [`kernel`]: policy -> plan (pure), and the XDP program and its maps;
//! - [`store`], [`control`]: the state file; the running policy and every change to it;
//! - [`runtime`]: the daemon's shared state and tasks (attach, sampler);
//! - [`api`]: HTTP only;
//! - [`settings`], [`client`], [`daemon`]: the file and flags, the CLI client, the daemon's main loop;
//! - [`logging`]: the daemon's log output, which never fails (beside all of them).

pub mod api;
pub mod client;
pub mod control;
pub mod controller;
pub mod daemon;
pub mod kernel;
pub mod logging;
pub mod policy;
pub mod runtime;
pub mod settings;
pub mod store;
