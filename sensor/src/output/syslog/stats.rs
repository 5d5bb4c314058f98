//! What syslog delivery did, for `sensor.health`, `sensor.stop` and the metrics: kept apart
//! from the sender so the line queue, which carries it to the event loop, needs nothing else.
use serde::Serialize;

/// What syslog delivery did since start (in `sensor.health`, `sensor.stop` and the metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyslogStats {
    pub target: String,
    pub connected: bool,
    /// Messages the receiver has: acknowledged by its TCP (tcp), queued on its socket (unix),
    /// handed to the network (udp, which can lose them unseen).
    pub sent: u64,
    /// Messages sent again on a new connection (tcp), duplicates after a reset included.
    pub resent: u64,
    /// Messages written but not yet acknowledged, and messages waiting for the receiver.
    pub pending: u64,
}
