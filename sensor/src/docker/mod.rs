//! What container API traffic and builder command lines mean: typed operations, image
//! references, the Dockerfile of a build context, Docker's on-disk image store.
pub mod api;
pub mod commands;
pub mod daemon_api;
pub mod dockerfile;
pub mod reference;
pub mod store;
