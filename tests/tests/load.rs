//! Load on one activated demo-server: 10,000 HTTP/1.1 requests over 100 concurrent keep-alive
//! connections on loopback. Every request must succeed, and afterwards the server's fd table
//! is back at its baseline and its memory did not grow beyond a generous bound (a leak check,
//! not a performance test: the duration is printed, never asserted).
//!
//! The launcher side of "nothing lost" (1,000 spawn/drop cycles: no zombie, no fd) is
//! `launcher/tests/no_leaks.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use sd_launch::{Launch, Stdio};
use sd_launch_tests::bin;

const CONNECTIONS: usize = 100;
const REQUESTS_PER_CONNECTION: usize = 100;
const BODY: &str = "Hello from demo-server!\n";

/// Open fds of `pid`, from /proc.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the daemon's fd table")
        .count()
}

/// Resident memory of `pid` in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/pid/status")
}

/// One keep-alive connection sending `n` requests one after the other; the number of
/// responses that were not `200` with the greeting (an I/O error counts the rest as failed).
fn client(addr: SocketAddr, n: usize) -> usize {
    let run = || -> std::io::Result<usize> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let mut bad = 0;
        for _ in 0..n {
            writer.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
            let mut status = String::new();
            reader.read_line(&mut status)?;
            let mut length = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                if line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse::<usize>().ok();
                }
            }
            let mut body = vec![0; length.unwrap_or(0)];
            reader.read_exact(&mut body)?;
            if !status.starts_with("HTTP/1.1 200") || body != BODY.as_bytes() {
                bad += 1;
            }
        }
        Ok(bad)
    };
    run().unwrap_or_else(|e| {
        eprintln!("connection failed: {e}");
        n
    })
}

/// `CONNECTIONS` clients in parallel, `per_connection` requests each; failed requests.
fn load(addr: SocketAddr, per_connection: usize) -> usize {
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| std::thread::spawn(move || client(addr, per_connection)))
        .collect();
    clients.into_iter().map(|c| c.join().unwrap()).sum()
}

/// Wait (bounded, a hang guard) until the daemon has closed the connections we closed.
fn settle_fds(pid: u32, baseline: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = fd_count(pid);
        if now <= baseline || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fd count once it has stopped falling (the same for 5 reads 50 ms apart): the daemon's
/// own fds with no connection open, whatever its runtime keeps.
fn steady_fds(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut same) = (fd_count(pid), 0);
    while same < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = fd_count(pid);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

#[test]
fn ten_thousand_requests_over_a_hundred_connections_without_error_or_leak() {
    let server = Launch::new(bin("demo-server"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("launch demo-server");
    let pid = server.pid();
    let addr = server.local_addr(0);

    // Warm-up: the runtime's worker threads, buffers and allocator pools come into being.
    assert_eq!(load(addr, 10), 0, "failed requests during the warm-up");
    let baseline_fds = steady_fds(pid);
    let warm_rss = rss_kib(pid);

    let started = Instant::now();
    let failed = load(addr, REQUESTS_PER_CONNECTION);
    let elapsed = started.elapsed();
    let total = CONNECTIONS * REQUESTS_PER_CONNECTION;
    assert_eq!(failed, 0, "{failed} of {total} requests failed");

    let fds = settle_fds(pid, baseline_fds);
    let rss = rss_kib(pid);
    println!(
        "{total} requests over {CONNECTIONS} connections in {:.2} s ({:.0} req/s); \
         daemon fds {baseline_fds} -> {fds}; VmRSS {warm_rss} KiB -> {rss} KiB",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(fds, baseline_fds, "the daemon holds fds it no longer needs");
    let bound = warm_rss + (warm_rss / 2).max(8 * 1024);
    assert!(
        rss <= bound,
        "VmRSS grew from {warm_rss} KiB to {rss} KiB (bound {bound} KiB)"
    );
    assert!(sd_launch_tests::alive(pid), "the daemon died under load");
}
