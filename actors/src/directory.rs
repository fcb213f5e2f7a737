//! A directory of a tree's named actors, so that one component can message another (the admin
//! API a job, a job the search indexer) without a process-wide registry: two trees in one
//! process (tests start several servers) each have their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use ractor::ActorCell;

/// Named actors of one supervision tree; a child registers itself each time it starts.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    actors: Arc<Mutex<HashMap<String, ActorCell>>>,
}

impl Directory {
    /// An empty directory.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `cell` as `name` (replacing an earlier incarnation).
    pub fn register(&self, name: impl Into<String>, cell: ActorCell) {
        self.actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.into(), cell);
    }

    /// The actor registered as `name`, if any (it may have stopped since: a message to it then
    /// fails).
    #[must_use]
    pub fn get(&self, name: &str) -> Option<ActorCell> {
        self.actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }
}
