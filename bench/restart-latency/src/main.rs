//! Restart latency of the supervision runtime: the time from a child's panic to its replacement
//! answering a message, over many panics. Prints p50, p99 and max, and the ratio against
//! systemd's default `RestartSec=100ms`.
//!
//! Usage: `cargo run --release -p restart-latency -- [PANICS]` (default 2000).
#![allow(
    clippy::print_stdout,
    clippy::expect_used,
    reason = "a benchmark binary reports on stdout and fails loudly"
)]

use std::time::{Duration, Instant};

use actors::{
    Backoff, ChildSpec, HealthRegistry, Intensity, RestartType, Supervisor, SupervisorSpec,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, call};
use tokio::sync::mpsc;

struct Child {
    started: mpsc::UnboundedSender<ActorRef<ChildMsg>>,
}

enum ChildMsg {
    Panic,
    Ping(RpcReplyPort<()>),
}

impl Actor for Child {
    type Msg = ChildMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<ChildMsg>,
        (): (),
    ) -> Result<(), ActorProcessingErr> {
        let _ = self.started.send(myself);
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<ChildMsg>,
        message: ChildMsg,
        (): &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ChildMsg::Panic => panic!("deliberate panic"),
            ChildMsg::Ping(reply) => {
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let panics: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    // Panics are the point here; printing each one would measure the terminal instead.
    std::panic::set_hook(Box::new(|_| {}));

    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = SupervisorSpec::new("bench", HealthRegistry::new())
        .intensity(Intensity {
            max_restarts: u32::MAX,
            period: Duration::from_secs(1),
        })
        .backoff(Backoff::none())
        .child(ChildSpec::actor(
            "child",
            RestartType::Permanent,
            move || {
                (
                    Child {
                        started: tx.clone(),
                    },
                    (),
                )
            },
        ));
    let root = Supervisor::start_root(spec)
        .await
        .expect("supervisor starts");
    let mut child = rx.recv().await.expect("first child");

    let mut samples = Vec::with_capacity(panics);
    for _ in 0..panics {
        let start = Instant::now();
        child.send_message(ChildMsg::Panic).expect("child alive");
        child = rx.recv().await.expect("replacement started");
        call!(child, ChildMsg::Ping).expect("replacement answers");
        samples.push(start.elapsed());
    }
    root.shutdown().await;

    samples.sort();
    let p50 = percentile(&samples, 0.50);
    let p99 = percentile(&samples, 0.99);
    let max = samples[samples.len() - 1];
    let systemd = Duration::from_millis(100);
    println!("restart latency over {panics} panics (panic -> replacement answers a message)");
    println!("  p50 {:>8.1} us", p50.as_secs_f64() * 1e6);
    println!("  p99 {:>8.1} us", p99.as_secs_f64() * 1e6);
    println!("  max {:>8.1} us", max.as_secs_f64() * 1e6);
    println!(
        "  vs systemd RestartSec=100ms: {:.0}x faster at p99 (goal: p99 < 5 ms; aim < 1 ms)",
        systemd.as_secs_f64() / p99.as_secs_f64()
    );
}
