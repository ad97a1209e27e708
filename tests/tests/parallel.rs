//! The seed's promise under load: many daemons started at once, each on its own free port,
//! with no port collision and nothing left running afterwards.

use sd_launch::Launch;
use sd_launch_tests::{bin, get_tcp, wait_gone};
use std::collections::HashSet;
use std::sync::Arc;

const SERVERS: usize = 200;
const THREADS: usize = 8;

#[test]
fn two_hundred_servers_in_parallel_each_answer_on_its_own_port() {
    let demo = Arc::new(bin("demo-server"));
    // Each thread launches its share and keeps the handles alive until all are checked.
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let demo = Arc::clone(&demo);
            std::thread::spawn(move || {
                (t..SERVERS)
                    .step_by(THREADS)
                    .map(|_| {
                        Launch::new(demo.as_path())
                            .stderr(sd_launch::Stdio::null())
                            .spawn()
                            .expect("spawn demo-server")
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let launched: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(launched.len(), SERVERS);

    let ports: HashSet<u16> = launched.iter().map(|l| l.local_addr(0).port()).collect();
    assert_eq!(
        ports.len(),
        SERVERS,
        "port collision among the launched servers"
    );

    // Every server answers, and it is the one we launched on that port.
    for l in &launched {
        let r = get_tcp(l.local_addr(0), "/info").expect("request");
        assert_eq!(r.status, 200);
        let info: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(info["pid"], l.pid());
    }

    let pids: Vec<u32> = launched.iter().map(|l| l.pid()).collect();
    drop(launched);
    let left: Vec<_> = pids.into_iter().filter(|&p| !wait_gone(p)).collect();
    assert!(left.is_empty(), "still running after drop: {left:?}");
}
