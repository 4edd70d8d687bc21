//! Running the process: Prometheus metrics, logging, and the shutdown signal.

pub mod metrics;
pub mod shutdown;
pub mod telemetry;
