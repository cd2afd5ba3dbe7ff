//! throttle: an XDP ingress throttle. This crate is the user-space side: the
//! configuration, the loader and map access, and the daemon.

#[doc(hidden)]
pub mod baseline;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod frames;
