//! throttle: an XDP ingress throttle. This crate is the user-space side: the
//! configuration, the loader and map access, the control plane and its admin
//! API, the adaptive controller, the daemon and the command-line client.

pub mod api;
pub mod client;
pub mod config;
pub mod control;
pub mod controller;
pub mod daemon;
pub mod dataplane;
pub mod rule_filter;
pub mod store;
