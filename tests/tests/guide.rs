//! The tests of the "Testing with sd-launch" guide (launcher/README.md), run as they are
//! printed there: each block between `// guide:` and `// end` is in the README verbatim (the
//! last test checks it), so the guide cannot drift from code that works.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sd_launch::{Launch, Shared, Wait};

/// The guide's one helper: GET a path over a fresh connection, return status line and body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    let mut conn = TcpStream::connect(addr)?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}

// guide: demo-server
#[test]
fn demo_server_answers_the_first_request() -> Result<(), Box<dyn std::error::Error>> {
    // A binary of this workspace, by name; the socket is bound before it starts.
    let server = Launch::cargo_bin("demo-server")?.spawn()?;
    // No wait, no retry: the connection waits in the backlog until demo-server accepts.
    let (status, body) = get(server.addr(0)?, "/")?;
    assert!(status.ends_with("200 OK"), "{status}");
    assert_eq!(body, "Hello from demo-server!\n");
    Ok(()) // dropping `server` stops it; had the test failed, its output would be shown
}
// end

// guide: shared
static DEMO: Shared = Shared::new(|| {
    Launch::cargo_bin("demo-server")
        .expect("demo-server is built")
        .wait_until(Wait::http("/healthz"), Duration::from_secs(10))
});

#[test]
fn every_test_of_the_binary_can_use_one_demo_server() -> std::io::Result<()> {
    let (status, _) = get(DEMO.get().addr(0).expect("a TCP socket"), "/info")?;
    assert!(status.ends_with("200 OK"), "{status}");
    Ok(())
}
// end

// guide: lighttpd
#[test]
fn lighttpd_serves_a_file_from_the_passed_socket() -> Result<(), Box<dyn std::error::Error>> {
    if sd_launch_tests::tool("lighttpd", "lighttpd").is_none() {
        return Ok(()); // SKIPPED, loudly (a failure under CI=true)
    }
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("index.html"), "hello from lighttpd\n")?;
    let conf = dir.path().join("lighttpd.conf");
    std::fs::write(
        &conf,
        format!(
            "server.document-root = \"{}\"\nserver.port = 1\n\
             server.systemd-socket-activation = \"enable\"\nindex-file.names = (\"index.html\")\n",
            dir.path().display()
        ),
    )?;
    // lighttpd sends no READY=1; it needs no wait either, but an HTTP check shows how.
    let server = Launch::new("/usr/sbin/lighttpd")
        .args(["-D", "-f"])
        .arg(&conf)
        .wait_until(Wait::http("/"), Duration::from_secs(10))
        .spawn()?;
    let (status, body) = get(server.addr(0)?, "/")?;
    assert!(status.ends_with("200 OK"), "{status}");
    assert_eq!(body, "hello from lighttpd\n");
    Ok(())
}
// end

// guide: gunicorn
#[test]
fn gunicorn_serves_a_wsgi_app_from_the_passed_socket() -> Result<(), Box<dyn std::error::Error>> {
    let Some(gunicorn) = sd_launch_tests::python_tool("gunicorn") else {
        return Ok(()); // SKIPPED, loudly (a failure under CI=true)
    };
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("app.py"),
        "def app(environ, start_response):\n\
         \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
         \x20   return [b'hello from gunicorn\\n']\n",
    )?;
    // gunicorn takes LISTEN_FDS by itself; its log line says when a worker is up.
    let server = Launch::new(gunicorn)
        .args(["--no-control-socket", "--workers", "1", "--chdir"])
        .arg(dir.path())
        .arg("app:app")
        .wait_until(Wait::log("Booting worker")?, Duration::from_secs(30))
        .spawn()?;
    let (status, body) = get(server.addr(0)?, "/")?;
    assert!(status.ends_with("200 OK"), "{status}");
    assert_eq!(body, "hello from gunicorn\n");
    Ok(())
}
// end

// guide: redis
#[test]
fn redis_answers_at_once_behind_a_proxy_of_its_own() -> Result<(), Box<dyn std::error::Error>> {
    if sd_launch_tests::tool("redis-server", "redis-server").is_none() {
        return Ok(()); // SKIPPED, loudly (a failure under CI=true)
    }
    // Redis cannot take a socket: it listens where `${backend.path}` says, a private Unix
    // socket, behind a proxy whose public port exists before redis starts.
    let redis = Launch::new("redis-server")
        .args([
            "--port",
            "0",
            "--unixsocket",
            "${backend.path}",
            "--save",
            "",
        ])
        .proxy()?
        .spawn()?;
    let mut conn = TcpStream::connect(redis.local_addr(0))?; // at once: the proxy holds it
    conn.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 7];
    conn.read_exact(&mut reply)?;
    assert_eq!(&reply, b"+PONG\r\n");
    Ok(()) // dropping `redis` stops it, and the proxy
}
// end

#[test]
fn the_guide_in_the_readme_is_these_tests() {
    let readme = include_str!("../../launcher/README.md");
    let source = include_str!("guide.rs");
    let mut blocks = 0;
    for block in source.split("// guide: ").skip(1) {
        let (name, rest) = block.split_once('\n').unwrap();
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            continue; // the mentions of the markers in this file's docs and code
        }
        let code = rest.split("// end").next().unwrap().trim_end();
        assert!(
            readme.contains(code),
            "launcher/README.md lacks the {name} test as it is in tests/tests/guide.rs"
        );
        blocks += 1;
    }
    assert_eq!(blocks, 5);
}
