//! What is kept in memory between requests: whole answers as sent, and rendered features for
//! box queries over features already read.

pub mod features;
pub mod responses;
