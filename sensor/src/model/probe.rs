//! A kernel program the sensor could not attach, as `sensor.start` lists it.
use serde::Serialize;

/// A tracepoint left out (the kernel lacks it, or refused the program), and why.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedProbe {
    pub tracepoint: String,
    pub reason: String,
}
