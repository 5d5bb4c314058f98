//! JSON lines out: the event schema (documented in docs/events.md) and the sinks.
pub mod schema;
pub mod sink;

pub use schema::Emitter;
pub use sink::Sink;
