//! The supervision runtime of Pozi Server: Erlang/OTP-style supervisors on top of `ractor`.
//!
//! It gives child specifications (how to build and rebuild a child, its restart type and
//! shutdown timeout), the three OTP strategies, restart intensity with escalation, capped
//! exponential backoff with jitter scheduled by timers, ordered start and reverse-ordered
//! shutdown, and a [`HealthRegistry`] that request handlers read without messaging any actor.
//!
//! It knows nothing of HTTP, GIS data or configuration files: the server builds its tree from
//! these parts.

mod directory;
mod health;
mod policy;
mod spec;
mod supervisor;

pub use directory::Directory;
pub use health::{ComponentHealth, ComponentState, HealthRegistry, LastError};
pub use policy::{Backoff, Intensity, RestartType, Strategy};
pub use spec::{ChildSpec, StartFuture};
pub use supervisor::{
    RootHandle, RootOutcome, Supervisor, SupervisorError, SupervisorMsg, SupervisorSpec,
};
