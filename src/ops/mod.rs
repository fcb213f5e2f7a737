//! What operators read: the health document and the checks it adds to the components' (later:
//! metrics and the status page).

pub mod checks;
pub mod health;
