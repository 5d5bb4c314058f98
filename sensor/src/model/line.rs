//! The kinds of line buildwatch writes, by their `kind` field (docs/events.md).
use serde::Serialize;

/// Every kind of line buildwatch writes (docs/events.md, docs/detections.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LineKind {
    ProcessFork,
    ProcessExec,
    ProcessExit,
    SocketConnect,
    SocketAccept,
    SocketData,
    SocketClose,
    DockerOperation,
    Build,
    Detection,
    SensorStart,
    SensorHealth,
    SensorLoss,
    SensorWarning,
    SensorDaemon,
    SensorStop,
}

impl LineKind {
    pub const ALL: [LineKind; 16] = [
        Self::ProcessFork,
        Self::ProcessExec,
        Self::ProcessExit,
        Self::SocketConnect,
        Self::SocketAccept,
        Self::SocketData,
        Self::SocketClose,
        Self::DockerOperation,
        Self::Build,
        Self::Detection,
        Self::SensorStart,
        Self::SensorHealth,
        Self::SensorLoss,
        Self::SensorWarning,
        Self::SensorDaemon,
        Self::SensorStop,
    ];

    /// The `kind` field of its lines.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ProcessFork => "process.fork",
            Self::ProcessExec => "process.exec",
            Self::ProcessExit => "process.exit",
            Self::SocketConnect => "socket.connect",
            Self::SocketAccept => "socket.accept",
            Self::SocketData => "socket.data",
            Self::SocketClose => "socket.close",
            Self::DockerOperation => "docker.operation",
            Self::Build => "build",
            Self::Detection => "detection",
            Self::SensorStart => "sensor.start",
            Self::SensorHealth => "sensor.health",
            Self::SensorLoss => "sensor.loss",
            Self::SensorWarning => "sensor.warning",
            Self::SensorDaemon => "sensor.daemon",
            Self::SensorStop => "sensor.stop",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// The sensor's own lines (start, health, loss, warning, daemon, stop).
    pub const fn is_sensor(self) -> bool {
        matches!(
            self,
            Self::SensorStart
                | Self::SensorHealth
                | Self::SensorLoss
                | Self::SensorWarning
                | Self::SensorDaemon
                | Self::SensorStop
        )
    }
}

impl Serialize for LineKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for LineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
