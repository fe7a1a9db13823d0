//! `spillway serve` as a real process on free loopback ports, with its files in a temporary
//! directory and its output in `stdout.N.log` / `stderr.N.log` per run.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub public: u16,
    pub admin: u16,
    pub keys_url: String,
    /// Defaults to SQLite in `dir`.
    pub database_url: String,
    /// Extra environment for every command.
    pub env: Vec<(String, String)>,
}

impl Setup {
    pub fn new(keys_url: String, database_url: Option<&str>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let database_url = database_url.map_or_else(
            || format!("sqlite://{}", dir.path().join("spillway.db").display()),
            str::to_owned,
        );
        Setup {
            dir,
            public: free_port(),
            admin: free_port(),
            keys_url,
            database_url,
            env: Vec::new(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new(env!("CARGO_BIN_EXE_spillway"));
        c.args(args)
            .current_dir(d)
            .env("SPILLWAY_DATABASE_URL", &self.database_url)
            .env("SPILLWAY_KEY_FILE", d.join("spillway.keys"))
            .env(
                "SPILLWAY_AUDIT_CHECKPOINT_FILE",
                d.join("audit.checkpoints"),
            )
            .env("SPILLWAY_LISTEN_ADDR", format!("127.0.0.1:{}", self.public))
            .env("SPILLWAY_ADMIN_ADDR", format!("127.0.0.1:{}", self.admin))
            .env(
                "SPILLWAY_PUBLIC_URL",
                format!("http://127.0.0.1:{}", self.public),
            )
            .env("SPILLWAY_GITHUB_KEYS_URL", &self.keys_url)
            .env("SPILLWAY_LOG", "debug")
            .env_remove("SPILLWAY_CRASH_AT");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Starts `serve` (run number `run` names its logs) with `extra` environment, and waits until
    /// both addresses accept connections.
    pub fn start_with(&self, run: usize, extra: &[(&str, &str)]) -> Child {
        let log = |name: &str| {
            std::fs::File::create(self.dir.path().join(format!("{name}.{run}.log"))).unwrap()
        };
        let mut command = self.command(&["serve"]);
        for (k, v) in extra {
            command.env(k, v);
        }
        let child = command
            .stdout(log("stdout"))
            .stderr(log("stderr"))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.admin)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.public)).is_ok()
            {
                return child;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("spillway serve did not start");
    }

    pub fn start(&self, run: usize) -> Child {
        self.start_with(run, &[])
    }

    /// Every file in the directory, with its bytes (logs, database, WAL, checkpoints).
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().to_string_lossy().into_owned();
                Some((name, std::fs::read(e.path()).ok()?))
            })
            .collect()
    }
}
