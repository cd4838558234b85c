//! Faults a test inflicts on a `redis-server` it started: restart without
//! persistence (every key lost), FLUSHALL, freeze (SIGSTOP) and thaw, and a
//! loopback TCP proxy in front of it that can delay or black-hole traffic.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::Server;

impl Server {
    /// Kills the server and starts a new one on the same port, with no
    /// persistence: every key is gone, as after a restart without RDB/AOF or
    /// a failover to an empty replica.
    pub fn restart(&mut self) {
        self.stop();
        let fresh = Self::start_on(self.port)
            .unwrap_or_else(|| panic!("redis-server did not restart on port {}", self.port));
        let old = std::mem::replace(self, fresh);
        std::mem::forget(old);
    }

    /// `FLUSHALL` on the server.
    pub fn flushall(&self) {
        let mut conn = redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .unwrap_or_else(|e| panic!("FLUSHALL: cannot connect: {e}"));
        redis::cmd("FLUSHALL")
            .query::<()>(&mut conn)
            .unwrap_or_else(|e| panic!("FLUSHALL failed: {e}"));
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill {signal}: {e}"));
        assert!(status.success(), "kill {signal} failed");
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of a process, from /proc, in KiB.
    pub fn rss_kib(pid: u32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

/// CPU time (user + system) this process has used so far, from /proc.
pub fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after ')'.
    let total = ticks(11) + ticks(12);
    // USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(total * 10)
}

/// A loopback TCP proxy in front of a server: forwards both ways, each chunk
/// `delay` after it arrived, or holds everything while black-holed (connections stay
/// open, nothing arrives until it is lifted, as TCP delivers what a
/// partition held back once it heals).
pub struct FaultProxy {
    pub port: u16,
    delay_us: Arc<AtomicU64>,
    blackhole: Arc<AtomicBool>,
    dropping: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Bumped by `cut`: connections of an older generation close.
    generation: Arc<AtomicU64>,
}

impl FaultProxy {
    /// A proxy on a free loopback port in front of `127.0.0.1:target`.
    pub fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local addr").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let proxy = Self {
            port,
            delay_us: Arc::new(AtomicU64::new(0)),
            blackhole: Arc::new(AtomicBool::new(false)),
            dropping: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            generation: Arc::new(AtomicU64::new(0)),
        };
        let link = Link {
            delay: Arc::clone(&proxy.delay_us),
            hole: Arc::clone(&proxy.blackhole),
            dropping: Arc::clone(&proxy.dropping),
            stop: Arc::clone(&proxy.stop),
            generation: Arc::clone(&proxy.generation),
            born: 0,
        };
        std::thread::spawn(move || {
            while !link.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        };
                        let _ = client.set_nonblocking(false);
                        // No Nagle delay on top of the one we add.
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let born = link.generation.load(Ordering::Relaxed);
                        for (from, to) in [
                            (client.try_clone(), server.try_clone()),
                            (server.try_clone(), client.try_clone()),
                        ] {
                            if let (Ok(from), Ok(to)) = (from, to) {
                                let link = Link {
                                    born,
                                    ..link.clone()
                                };
                                std::thread::spawn(move || pump(from, to, &link));
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Every chunk waits `delay` before it is forwarded (0: none).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us.store(
            u64::try_from(delay.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Hold everything (true) or forward again (false).
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::Relaxed);
    }

    /// Discard everything (true: it never arrives) or forward again.
    /// Clients then need a clean connection: see [`cut`](Self::cut).
    pub fn set_dropping(&self, on: bool) {
        self.dropping.store(on, Ordering::Relaxed);
    }

    /// Closes every connection made so far (within 100 ms), as a network
    /// that drops them does; new ones are accepted.
    pub fn cut(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one direction of one connection shares with the proxy.
#[derive(Clone)]
struct Link {
    delay: Arc<AtomicU64>,
    hole: Arc<AtomicBool>,
    dropping: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    /// The generation the connection was made in.
    born: u64,
}

impl Link {
    fn open(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && self.generation.load(Ordering::Relaxed) == self.born
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Forwards `from` to `to`: a reader stamps each chunk, a writer sends it
/// `delay` after it arrived (a delay line: added latency, not less
/// throughput); nothing moves while black-holed, and what arrives while
/// dropping is discarded.
fn pump(mut from: TcpStream, to: TcpStream, link: &Link) {
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    let Ok(mut out) = to.try_clone() else {
        return;
    };
    let writer_link = link.clone();
    let writer = std::thread::spawn(move || {
        while let Ok((arrived, chunk)) = rx.recv() {
            let wait = Duration::from_micros(writer_link.delay.load(Ordering::Relaxed));
            let due = arrived + wait;
            let now = std::time::Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            while writer_link.hole.load(Ordering::Relaxed) && writer_link.open() {
                std::thread::sleep(Duration::from_millis(2));
            }
            if !writer_link.open() || out.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = out.shutdown(Shutdown::Both);
    });
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 * 1024];
    while link.open() {
        if link.hole.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if link.dropping.load(Ordering::Relaxed) {
                    continue;
                }
                if tx
                    .send((std::time::Instant::now(), buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
