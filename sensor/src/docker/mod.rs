//! What Docker API traffic and builder command lines mean: requests classified into typed
//! operations, the Dockerfile of a build context, Docker's on-disk image store, the questions the
//! sensor asks a trusted dockerd.
pub mod api;
pub mod commands;
pub mod daemon_api;
pub mod dockerfile;
pub mod store;
