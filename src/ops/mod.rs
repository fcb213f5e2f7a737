//! What operators read: the health document and the checks it adds to the components', the
//! Prometheus metrics, and the status page.

pub mod checks;
pub mod health;
pub mod metrics;
pub mod status;
