//! Kernel programs of buildwatch. The object is built from `main.rs` for the BPF target; this
//! library target only exists so the agent can name this crate as a build dependency.
#![no_std]
