//! What operators read: the health document and the checks it adds to the components' and the
//! metrics (later: the status page).

pub mod checks;
pub mod health;
pub mod metrics;
