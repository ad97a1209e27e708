//! Launches from many threads at once: the kernel hands every socket its own port, so
//! parallel tests never collide, and forking from a busy multi-threaded process is safe.

use std::collections::HashSet;
use std::net::TcpStream;

use sd_launch::{Launch, Launched};

#[test]
fn two_hundred_parallel_launches_get_distinct_connectable_ports() {
    let threads: Vec<_> = (0..200)
        .map(|_| std::thread::spawn(|| Launch::new("sleep").arg("30").spawn().unwrap()))
        .collect();
    let daemons: Vec<Launched> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ports: HashSet<u16> = daemons.iter().map(|d| d.local_addr(0).port()).collect();
    assert_eq!(ports.len(), 200, "port collision");
    let pids: HashSet<u32> = daemons.iter().map(Launched::pid).collect();
    assert_eq!(pids.len(), 200);
    for d in &daemons {
        TcpStream::connect(d.local_addr(0))
            .unwrap_or_else(|e| panic!("daemon {} on {}: {e}", d.pid(), d.local_addr(0)));
    }
}
