//! The HTTPS listener and everything a browser reads from it.
//!
//! One request pipeline, in this order (each step a module):
//! 1. `serve`: accept, TLS handshake in the connection's own task, HTTP/1.1 or HTTP/2 by ALPN,
//!    limits (connections, handshake, header read, idle, header size).
//! 2. `service`: CORS preflight answered; the route looked up once; GET/HEAD of a static file
//!    straight to the file server (steps 4–6), anything else dispatched; panics caught (500 to
//!    that request alone); CORS headers added; access log.
//! 3. `routes`: the route table (`/health`, the APIs in `crate::api`, reverse-proxy prefixes,
//!    then files; 405 for other methods) and the dispatch to each handler; an error becomes
//!    JSON through `crate::api::error::ApiError`.
//! 4. `host`: the `Host` header picks `userdata/<folder>`, falling back to `userdata/local`.
//! 5. `crate::safe_path`: the request path becomes segments that cannot leave the folder.
//! 6. `static_files`: content type, validators, ranges, compression, caching headers.
//!
//! `listen` binds the addresses (shared with a successor during an update) and keeps the note
//! in `state/` that says which process listens where.

mod component;
mod cors;
mod forwarded;
mod host;
pub mod listen;
mod proxy;
mod routes;
mod serve;
mod service;
mod static_files;
pub mod tls;

pub use component::{ACTOR_NAME as HTTP_ACTOR, HttpArgs, HttpComponent, HttpMsg, Listening};
pub use listen::{SERVER_NOTE, ServerNote, running_server};
