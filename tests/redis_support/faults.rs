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
/// after `delay`, or swallows everything while black-holed (connections stay
/// open, nothing arrives: what a partition looks like to a client).
pub struct FaultProxy {
    pub port: u16,
    delay_us: Arc<AtomicU64>,
    blackhole: Arc<AtomicBool>,
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
            stop: Arc::new(AtomicBool::new(false)),
            generation: Arc::new(AtomicU64::new(0)),
        };
        let (delay, hole, stop, generation) = (
            Arc::clone(&proxy.delay_us),
            Arc::clone(&proxy.blackhole),
            Arc::clone(&proxy.stop),
            Arc::clone(&proxy.generation),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        };
                        let _ = client.set_nonblocking(false);
                        let born = generation.load(Ordering::Relaxed);
                        for (from, to) in [
                            (client.try_clone(), server.try_clone()),
                            (server.try_clone(), client.try_clone()),
                        ] {
                            if let (Ok(from), Ok(to)) = (from, to) {
                                let (delay, hole, stop, generation) = (
                                    Arc::clone(&delay),
                                    Arc::clone(&hole),
                                    Arc::clone(&stop),
                                    Arc::clone(&generation),
                                );
                                std::thread::spawn(move || {
                                    let live = Live {
                                        stop: &stop,
                                        generation: &generation,
                                        born,
                                    };
                                    pump(from, to, &delay, &hole, &live);
                                });
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

    /// Swallow everything (true) or forward again (false).
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::Relaxed);
    }

    /// Closes every connection made so far (within 100 ms), as a network
    /// that drops them does; new ones are accepted. After a black-hole, this
    /// is how clients get a clean connection again.
    pub fn cut(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether a connection should stay open.
struct Live<'a> {
    stop: &'a AtomicBool,
    generation: &'a AtomicU64,
    born: u64,
}

impl Live<'_> {
    fn open(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && self.generation.load(Ordering::Relaxed) == self.born
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: &AtomicU64,
    hole: &AtomicBool,
    live: &Live<'_>,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 * 1024];
    while live.open() {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if hole.load(Ordering::Relaxed) {
                    continue;
                }
                let wait = delay.load(Ordering::Relaxed);
                if wait > 0 {
                    std::thread::sleep(Duration::from_micros(wait));
                }
                if to.write_all(&buf[..n]).is_err() {
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
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
