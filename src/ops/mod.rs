//! What operators read: the health document and the checks it adds to the components', the
//! Prometheus metrics, the status page, and live config reload.

pub mod checks;
pub mod health;
pub mod metrics;
pub mod reload;
pub mod status;
