//! The daemons under test and how to start each one either way: on a passed socket, or
//! binding a given port itself.
//!
//! lighttpd (Debian package) runs from a generated config with
//! `server.systemd-socket-activation = "enable"`. lighttpd also binds its configured
//! `server.bind` when it inherits a socket, so in passed-socket runs that address is a
//! per-instance Unix socket in the scratch directory (cheap, never collides), and in
//! self-binding runs it is `127.0.0.1` with `server.port` = the chosen port. Both come from
//! the environment (`env.LT_BIND`, `env.LT_PORT`), so one config file serves every instance.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Config;

/// Which program a [`Daemon`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// lighttpd from Debian, with a generated config.
    Lighttpd,
    /// This workspace's demo-server (`--listen ADDR` when it binds itself).
    DemoServer,
    /// `bench-daemon`: takes the passed socket or binds `--port`, then exits at once.
    BenchDaemon,
}

/// A daemon program with everything needed to start instances of it.
#[derive(Debug)]
pub struct Daemon {
    /// Which daemon.
    pub kind: Kind,
    /// Absolute path of the program.
    pub program: PathBuf,
    conf: Option<PathBuf>,
    scratch: PathBuf,
    counter: AtomicUsize,
}

/// argv (program first) and extra environment of one start.
pub type Invocation = (Vec<OsString>, Vec<(String, String)>);

impl Daemon {
    /// lighttpd with a generated config and document root in the scratch directory.
    pub fn lighttpd(config: &Config) -> io::Result<Daemon> {
        let program = crate::config::which(&["/usr/sbin/lighttpd", "lighttpd"])
            .ok_or_else(|| io::Error::other("lighttpd not found: apt-get install -y lighttpd"))?;
        static INSTANCE: AtomicUsize = AtomicUsize::new(0);
        let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let dir = config.scratch.path().join(format!("lighttpd-{n}"));
        let root = dir.join("www");
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("index.html"), "sd-launch bench\n")?;
        let conf = dir.join("lighttpd.conf");
        std::fs::write(
            &conf,
            format!(
                "server.document-root = \"{root}\"\n\
                 server.bind = env.LT_BIND\n\
                 server.port = env.LT_PORT\n\
                 server.systemd-socket-activation = \"enable\"\n\
                 server.errorlog = \"{log}\"\n\
                 server.max-fds = 64\n\
                 index-file.names = (\"index.html\")\n",
                root = root.display(),
                log = dir.join("error.log").display(),
            ),
        )?;
        Ok(Daemon {
            kind: Kind::Lighttpd,
            program,
            conf: Some(conf),
            scratch: dir,
            counter: AtomicUsize::new(0),
        })
    }

    /// demo-server built next to the harness, if it is there.
    pub fn demo_server(config: &Config) -> Option<Daemon> {
        Some(Daemon {
            kind: Kind::DemoServer,
            program: config.binary("demo-server")?,
            conf: None,
            scratch: config.scratch.path().to_path_buf(),
            counter: AtomicUsize::new(0),
        })
    }

    /// bench-daemon built next to the harness.
    pub fn bench_daemon(config: &Config) -> io::Result<Daemon> {
        Ok(Daemon {
            kind: Kind::BenchDaemon,
            program: config
                .binary("bench-daemon")
                .ok_or_else(|| io::Error::other("bench-daemon not built next to the harness"))?,
            conf: None,
            scratch: config.scratch.path().to_path_buf(),
            counter: AtomicUsize::new(0),
        })
    }

    /// Short name for tables.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Lighttpd => "lighttpd",
            Kind::DemoServer => "demo-server",
            Kind::BenchDaemon => "bench-daemon",
        }
    }

    /// How to start it on a passed socket (fd 3).
    pub fn passed(&self) -> Invocation {
        let mut argv = vec![self.program.clone().into_os_string()];
        let mut env = Vec::new();
        if let Some(conf) = &self.conf {
            argv.extend(["-D".into(), "-f".into(), conf.clone().into_os_string()]);
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let spare = self.scratch.join(format!("spare-{n}.sock"));
            env.push(("LT_BIND".into(), spare.display().to_string()));
            env.push(("LT_PORT".into(), "80".into()));
        }
        (argv, env)
    }

    /// How to start it binding 127.0.0.1:`port` itself.
    pub fn self_bind(&self, port: u16) -> Invocation {
        let mut argv = vec![self.program.clone().into_os_string()];
        let mut env = Vec::new();
        match self.kind {
            Kind::Lighttpd => {
                let conf = self.conf.clone().unwrap_or_default();
                argv.extend(["-D".into(), "-f".into(), conf.into_os_string()]);
                env.push(("LT_BIND".into(), "127.0.0.1".into()));
                env.push(("LT_PORT".into(), port.to_string()));
            }
            Kind::DemoServer => {
                argv.extend(["--listen".into(), format!("127.0.0.1:{port}").into()]);
            }
            Kind::BenchDaemon => argv.extend(["--port".into(), port.to_string().into()]),
        }
        (argv, env)
    }
}

/// A `Command` for `inv` with all standard streams on /dev/null.
pub fn command(inv: &Invocation) -> Command {
    let mut cmd = Command::new(&inv.0[0]);
    cmd.args(&inv.0[1..])
        .envs(inv.1.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// An `sd_launch::Launch` for `inv` (passed socket on 127.0.0.1:0), streams on /dev/null.
pub fn launch(inv: &Invocation) -> sd_launch::Launch {
    let mut l = sd_launch::Launch::new(&inv.0[0])
        .args(&inv.0[1..])
        .stdin(sd_launch::Stdio::null())
        .stdout(sd_launch::Stdio::null())
        .stderr(sd_launch::Stdio::null());
    for (k, v) in &inv.1 {
        l = l.env(k, v);
    }
    l
}
