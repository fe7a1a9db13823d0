//! `spillway serve` (and any other subcommand) as a real process on free loopback ports, with its
//! files in a scratch directory removed on drop and its output in `stdout.N.log` / `stderr.N.log`
//! per run. Shared by the integration tests and the end-to-end benches, so both launch the service
//! the same way. Must not import the service's modules: it only runs the binary.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A loopback port free now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("a bound address")
        .port()
}

/// The `spillway` binary: `SPILLWAY_BIN`, else the one Cargo built beside the running test or
/// bench executable (`target/<profile>/deps/<name>` → `target/<profile>/spillway`).
pub fn spillway_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SPILLWAY_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the running executable");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("an executable under target/<profile>/deps");
    profile.join("spillway")
}

/// A directory removed (with everything in it) when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new() -> ScratchDir {
        let path = std::env::temp_dir().join(format!(
            "spillway-run-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&path).expect("create a scratch directory");
        ScratchDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for ScratchDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One service's ports, files and environment.
pub struct Setup {
    pub bin: PathBuf,
    pub dir: ScratchDir,
    pub public: u16,
    pub admin: u16,
    pub keys_url: String,
    /// Defaults to SQLite in `dir`.
    pub database_url: String,
    /// Extra environment for every command (applied last: it overrides the defaults).
    pub env: Vec<(String, String)>,
}

impl Setup {
    pub fn new(keys_url: String, database_url: Option<&str>) -> Setup {
        let dir = ScratchDir::new();
        let database_url = database_url.map_or_else(
            || format!("sqlite://{}", dir.path().join("spillway.db").display()),
            str::to_owned,
        );
        Setup {
            bin: spillway_bin(),
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
        let mut c = Command::new(&self.bin);
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
            .env_remove("SPILLWAY_CRASH_AT")
            .env_remove("SPILLWAY_PANIC_AT");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs a subcommand to completion; its stdout, or a panic with its stderr.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("run spillway");
        assert!(
            out.status.success(),
            "spillway {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Starts `serve` (run number `run` names its logs) with `extra` environment, and waits until
    /// both addresses accept connections.
    pub fn start_with(&self, run: usize, extra: &[(&str, &str)]) -> Child {
        let log = |name: &str| {
            std::fs::File::create(self.dir.path().join(format!("{name}.{run}.log")))
                .expect("create a log file")
        };
        let mut command = self.command(&["serve"]);
        for (k, v) in extra {
            command.env(k, v);
        }
        let mut child = command
            .stdout(log("stdout"))
            .stderr(log("stderr"))
            .spawn()
            .expect("spawn spillway serve");
        // Generous: on a 2-core CI machine running the whole suite, a start (keys, migrations,
        // rules) once took longer than 20 s.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.admin)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.public)).is_ok()
            {
                return child;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
            .expect("read the scratch directory")
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().to_string_lossy().into_owned();
                Some((name, std::fs::read(e.path()).ok()?))
            })
            .collect()
    }
}
