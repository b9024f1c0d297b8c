//! A TCP proxy on loopback that delays every byte by a fixed one-way latency in each
//! direction: what a network between worker and database costs, for the scale-out table
//! (issue 14 item 4). The issue suggests `tc netem` on a second network namespace; this
//! machine's kernel has no `netem` qdisc (`tc qdisc add .. netem` answers "Specified qdisc
//! kind is unknown"), so the latency is added in user space instead.
//!
//! Each direction of each connection is one reader thread (stamps each chunk with its
//! arrival time) and one writer thread (sends the chunk at arrival + delay, with
//! `thread::sleep`, i.e. `nanosleep`, precise to tens of microseconds): a latency, not a
//! bandwidth limit, so pipelined traffic stays pipelined.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A running proxy; stops accepting when dropped (open connections end with their peers).
#[derive(Debug)]
pub struct DelayProxy {
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards to `target` with `one_way` added in
    /// each direction.
    pub fn start(target: SocketAddr, one_way: Duration) -> Result<DelayProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("delay proxy: listen")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                pipe(client, s2, one_way);
                pipe(server, c2, one_way);
            }
        });
        Ok(DelayProxy { addr, stop })
    }

    /// `url` (a `postgres://` URL on this machine) pointed at the proxy instead.
    pub fn url(&self, url: &str) -> String {
        let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
        let rest = &url[scheme_end..];
        let host_start = rest.find('@').map(|i| i + 1).unwrap_or(0);
        let host_end = rest[host_start..]
            .find('/')
            .map(|i| host_start + i)
            .unwrap_or(rest.len());
        format!(
            "{}{}{}{}",
            &url[..scheme_end],
            &rest[..host_start],
            self.addr,
            &rest[host_end..]
        )
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// The host:port of a `postgres://` URL.
pub fn target_of(url: &str) -> Result<SocketAddr> {
    let rest = url.split_once("://").map(|x| x.1).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|x| x.1).unwrap_or(rest);
    let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
    hostport
        .parse()
        .with_context(|| format!("delay proxy: `{hostport}` is not an IP address and port"))
}

fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (at, chunk) in rx {
            let due = at + delay;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
