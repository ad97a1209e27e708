//! A socket-activatable tokio echo server: the recommended shape of a daemon `main`.
//!
//! ```text
//! cargo build -p listenfd-core --features tokio --example echo
//! systemd-socket-activate -l 127.0.0.1:7000 target/debug/examples/echo   # passed socket
//! target/debug/examples/echo                                             # binds 127.0.0.1:7000
//! ```

use listenfd_core::ListenFds;
use tokio::io::AsyncWriteExt;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Receive first, while the process has one thread: the LISTEN_* variables can then be
    // removed soundly. (#[tokio::main] would start worker threads before this line.)
    let mut fds = ListenFds::from_env()?;
    if let Some(why) = fds.not_for_us() {
        eprintln!("echo: binding 127.0.0.1:7000 ({why})");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        // Inside the runtime: the passed socket (made non-blocking), or a fresh bind.
        let listener = fds.tokio_tcp_listener_or_bind(0, "127.0.0.1:7000")?;
        eprintln!("echo: serving on {}", listener.local_addr()?);
        loop {
            let (mut conn, _) = listener.accept().await?;
            tokio::spawn(async move {
                let (mut reader, mut writer) = conn.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
                let _ = writer.shutdown().await;
            });
        }
    })
}
