//! JSON lines out: the event schema (documented in docs/events.md), the engine's sink, the
//! bounded queue and the writer thread with its stdout, file and syslog targets.
pub mod ecs;
pub mod queue;
pub mod schema;
pub mod settings;
pub mod sink;
pub mod syslog;
pub mod writer;

pub use schema::Emitter;
pub use sink::Sink;
