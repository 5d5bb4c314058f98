//! What container API traffic and builder command lines mean: typed operations, image
//! references, the Dockerfile of a build context.
pub mod api;
pub mod commands;
pub mod dockerfile;
pub mod reference;
