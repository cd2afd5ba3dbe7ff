//! throttle: an XDP ingress throttle. This crate is the user-space side: the
//! configuration, the loader and map access, and the daemon.

pub mod config;
pub mod controller;
pub mod daemon;
pub mod dataplane;
pub mod frames;
