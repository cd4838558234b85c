//! Shared state under the load and faults of many replicas, with real
//! processes and a real `redis-server` on loopback (issue 22). Not a
//! criterion bench: each scenario is one timed run that prints its figures.
//!
//! ```text
//! cargo bench --bench shared_state -- replicas [ROUNDS]   # over-admission at 3, 6, 12 replica processes
//! cargo bench --bench shared_state -- recovery [ROUNDS]   # backlogs of 20k and 100k keys, a 30 s outage at 5k new clients/s
//! ```
//!
//! `scripts/shared-state.sh` runs both, pinned (the replica on core 0, Redis
//! on core 1), and prints the machine and the date with the figures.
//!
//! `replicas`: R child processes (this binary, as replicas) each build a
//! local-first [`RateLimitLayer`] (600/min, burst 20, sync every 50 ms) on one
//! Redis and answer one request per line on a loopback socket; the driver
//! hammers one key round-robin over them for 6 s and counts what was
//! admitted against what one GCRA admits in that time (20 + 10/s).
//!
//! `recovery`: one local-first replica (1000/h, burst 10, sync 50 ms,
//! timeout 50 ms) meets new clients, one request each, while Redis is frozen
//! (SIGSTOP); then Redis thaws, and the run reports how long until every
//! admission reached Redis, how long until a client that spent its burst
//! during the outage is refused on a second replica, and how many one-request
//! clients the second replica refused (must be 0), with the CPU and memory
//! the replica used while Redis was down.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tollgate::rate_limit::store::{Check, RedisStore};
use tollgate::rate_limit::{KeyBy, Quota, RateKey, RateLimitLayer, RateLimitStore};

const REPLICA_ENV: &str = "TOLLGATE_BENCH_REPLICA";

fn main() {
    if let Ok(spec) = std::env::var(REPLICA_ENV) {
        replica(&spec);
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let redis = RedisServer::start();
    match args.first().map(String::as_str) {
        Some("replicas") => {
            let rounds = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(3);
            replicas(&redis, rounds);
        }
        Some("recovery") => {
            let rounds = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(3);
            recovery(&redis, rounds);
        }
        _ => {
            replicas(&redis, 3);
            recovery(&redis, 3);
        }
    }
}

/// A `redis-server` on a free loopback port, without persistence.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// `TOLLGATE_BENCH_REDIS_CPU=1` pins the server to that core
    /// (`taskset`), so that it does not share one with the replica.
    fn start() -> Self {
        let port = free_port();
        let mut command = match std::env::var("TOLLGATE_BENCH_REDIS_CPU") {
            Ok(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu, "redis-server"]);
                c
            }
            Err(_) => Command::new("redis-server"),
        };
        let child = command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("this bench starts its own redis-server: install Redis (apt-get install redis-server)");
        wait_for(port);
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {signal}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Connects to a replica once it listens (the replica serves one
/// connection: this one).
fn connect(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            return stream;
        }
        assert!(
            Instant::now() < deadline,
            "replica on {port} never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn local_first(url: &str, prefix: &str, quota: Quota) -> RateLimitLayer<RedisStore> {
    let store = RedisStore::connect(url)
        .await
        .expect("connect to Redis")
        .prefix(prefix)
        .timeout(Duration::from_millis(50))
        .local_first(Duration::from_millis(50));
    RateLimitLayer::builder("p", quota)
        .key(KeyBy::global())
        .store(store)
        .build()
        .expect("a layer")
}

async fn decide(layer: &RateLimitLayer<RedisStore>, key: &RateKey) -> bool {
    match layer.store().check(&layer.policies()[0], key) {
        Check::Ready(decision) => decision.is_ok_and(|d| d.allowed),
        Check::Pending(future) => future.await.is_ok_and(|d| d.allowed),
    }
}

/// A replica process: `port url prefix`; one request per line, answers `1`
/// (admitted) or `0`.
fn replica(spec: &str) {
    let mut parts = spec.split(' ');
    let (Some(port), Some(url), Some(prefix)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("{REPLICA_ENV}: port url prefix");
    };
    let listener =
        TcpListener::bind(("127.0.0.1", port.parse::<u16>().expect("port"))).expect("bind");
    let rt = runtime();
    let layer = rt.block_on(local_first(url, prefix, Quota::per_minute(600).burst(20)));
    let key = RateKey::global();
    let (stream, _) = listener.accept().expect("the driver connects");
    let _ = stream.set_nodelay(true);
    let mut out = stream.try_clone().expect("clone");
    for line in BufReader::new(stream).lines() {
        if line.is_err() {
            break;
        }
        let allowed = rt.block_on(async {
            // Let the sync task run between requests.
            tokio::task::yield_now().await;
            decide(&layer, &key).await
        });
        if out
            .write_all(if allowed { b"1\n" } else { b"0\n" })
            .is_err()
        {
            break;
        }
    }
}

fn replicas(redis: &RedisServer, rounds: usize) {
    println!("# over-admission, one hot key round-robin over R replica processes");
    println!("# quota 600/min burst 20, sync 50 ms, 6 s; one GCRA admits 20 + 10/s");
    println!("replicas\tround\tadmitted\tone_gcra\tratio");
    for round in 1..=rounds {
        for count in [3usize, 6, 12] {
            let prefix = format!("bench-replicas-{}-{round}-{count}", std::process::id());
            let mut children = Vec::new();
            let mut links = Vec::new();
            for _ in 0..count {
                let port = free_port();
                let child = Command::new(std::env::current_exe().expect("this binary"))
                    .env(REPLICA_ENV, format!("{port} {} {prefix}", redis.url()))
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("a replica process");
                children.push(child);
                let stream = connect(port);
                let _ = stream.set_nodelay(true);
                links.push((stream.try_clone().expect("clone"), BufReader::new(stream)));
            }
            // Let every replica register before the run.
            std::thread::sleep(Duration::from_millis(1_500));
            let started = Instant::now();
            let mut admitted = 0u64;
            let mut next = 0;
            let mut answer = String::new();
            while started.elapsed() < Duration::from_secs(6) {
                let (out, input) = &mut links[next];
                out.write_all(b"r\n").expect("send");
                answer.clear();
                input.read_line(&mut answer).expect("answer");
                if answer.trim() == "1" {
                    admitted += 1;
                }
                next = (next + 1) % count;
            }
            let elapsed = started.elapsed().as_secs_f64();
            let one = 20.0 + 10.0 * elapsed;
            println!(
                "{count}\t{round}\t{admitted}\t{one:.1}\t{:.3}",
                admitted as f64 / one
            );
            drop(links);
            for mut child in children {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn cpu_and_rss() -> (Duration, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu = Duration::from_millis((ticks(11) + ticks(12)) * 10);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    (cpu, rss)
}

fn recovery(redis: &RedisServer, rounds: usize) {
    println!("# recovery after an outage: local-first, 1000/h burst 10, sync 50 ms, timeout 50 ms");
    println!(
        "scenario\tround\tkeys\tall_merged_s\thot_refused_on_b_s\tone_request_refused_on_b\toutage_cpu_s\toutage_rss_growth_mib"
    );
    let rt = runtime();
    let cases = [
        ("20k at once", Duration::from_secs(2), 10_000u64),
        ("100k at once", Duration::from_secs(5), 20_000),
        ("30 s at 5k/s", Duration::from_secs(30), 5_000),
    ];
    let mut results: Vec<Vec<Outcome>> = cases.iter().map(|_| Vec::new()).collect();
    // Rounds interleave the scenarios, so that a slow minute of the machine
    // does not land on one of them only.
    for round in 1..=rounds {
        for (case, (name, outage, rate)) in cases.iter().enumerate() {
            let outcome = rt.block_on(recovery_case(redis, name, round, *outage, *rate));
            results[case].push(outcome);
        }
    }
    println!("# medians (range) over {rounds} rounds");
    for ((name, _, _), outcomes) in cases.iter().zip(&results) {
        let spread = |f: &dyn Fn(&Outcome) -> f64| {
            let mut v: Vec<f64> = outcomes.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            format!("{:.2} ({:.2}–{:.2})", v[v.len() / 2], v[0], v[v.len() - 1])
        };
        println!(
            "{name}: all merged {} s; hot client refused on b {} s; one-request clients refused on b: {}; outage CPU {} s",
            spread(&|o| o.merged),
            spread(&|o| o.hot),
            outcomes.iter().map(|o| o.refused).max().unwrap_or(0),
            spread(&|o| o.cpu),
        );
    }
}

/// One run of a recovery scenario (seconds; `f64::INFINITY`: never).
struct Outcome {
    merged: f64,
    hot: f64,
    refused: u64,
    cpu: f64,
}

async fn recovery_case(
    redis: &RedisServer,
    name: &str,
    round: usize,
    outage: Duration,
    rate: u64,
) -> Outcome {
    let prefix = format!(
        "bench-recovery-{}-{round}-{}",
        std::process::id(),
        name.replace(' ', "-")
    );
    let quota = Quota::per_hour(1000).burst(10);
    let a = local_first(&redis.url(), &prefix, quota).await;
    let b = local_first(&redis.url(), &prefix, quota).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hot = RateKey::text("hot");
    redis.signal("-STOP");
    let (cpu0, rss0) = cpu_and_rss();
    let started = Instant::now();
    let mut clients = 0u64;
    let mut refused_new = 0u64;
    while started.elapsed() < outage {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while clients < due {
            if !decide(&a, &RateKey::text(format!("client-{clients}"))).await {
                refused_new += 1;
            }
            clients += 1;
        }
        // The hot client spends its whole burst on a.
        decide(&a, &hot).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (cpu1, rss1) = cpu_and_rss();
    assert_eq!(
        refused_new, 0,
        "{name}: a new client was refused during the outage"
    );
    redis.signal("-CONT");
    let thawed = Instant::now();
    let mut hot_refused = None;
    let mut all_merged = None;
    while thawed.elapsed() < Duration::from_secs(60)
        && (hot_refused.is_none() || all_merged.is_none())
    {
        if hot_refused.is_none() && !decide(&b, &hot).await {
            hot_refused = Some(thawed.elapsed());
        }
        if all_merged.is_none() && a.store().pending_keys() == 0 {
            all_merged = Some(thawed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut refused = 0;
    for i in (0..clients).step_by(97) {
        if !decide(&b, &RateKey::text(format!("client-{i}"))).await {
            refused += 1;
        }
    }
    let secs = |d: Option<Duration>| d.map_or(f64::INFINITY, |d| d.as_secs_f64());
    let outcome = Outcome {
        merged: secs(all_merged),
        hot: secs(hot_refused),
        refused,
        cpu: (cpu1 - cpu0).as_secs_f64(),
    };
    println!(
        "{name}\t{round}\t{clients}\t{:.2}\t{:.2}\t{refused}\t{:.2}\t{:.1}",
        outcome.merged,
        outcome.hot,
        outcome.cpu,
        rss1.saturating_sub(rss0) as f64 / 1024.0
    );
    outcome
}
