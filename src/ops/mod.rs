//! What operators read: the health document (later: metrics and the status page).

pub mod health;
