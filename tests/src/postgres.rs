//! A PostgreSQL server of a test's own (initdb in a temporary directory, on a free port),
//! which the test may stop and start again: the storage outage tests take down this one,
//! never the machine's.

use std::path::PathBuf;
use std::process::Command;

pub struct OwnPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

/// The directory of this machine's PostgreSQL programs (`initdb`, `pg_ctl`), if any.
fn programs() -> Option<PathBuf> {
    let versions = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    let mut found: Vec<PathBuf> = versions.filter_map(|v| Some(v.ok()?.path().join("bin"))).collect();
    found.sort();
    found.pop().filter(|bin| bin.join("initdb").exists())
}

impl OwnPostgres {
    /// A fresh cluster, started; none where PostgreSQL's programs are not installed.
    pub fn start() -> Option<Self> {
        let bin = programs()?;
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = OwnPostgres { dir, bin, port };
        if is_root() {
            // PostgreSQL refuses to run as root: its files belong to the postgres user.
            let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(server.dir.path()).status();
            assert!(chown.unwrap().success(), "chown the cluster's directory");
        }
        let data = server.data().to_str().unwrap().to_owned();
        server.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        server.start_again();
        Some(server)
    }

    /// Like [`OwnPostgres::start`], serving TLS only, with `ca`'s certificate for
    /// 127.0.0.1: a connection without TLS is refused (`hostssl` alone in pg_hba.conf).
    pub fn start_tls(ca: &crate::tls::TestCa) -> Option<Self> {
        let server = Self::start()?;
        server.stop();
        let data = server.data();
        for (from, to) in [(&ca.cert_file, "server.crt"), (&ca.key_file, "server.key")] {
            std::fs::copy(from, data.join(to)).unwrap();
        }
        std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n").unwrap();
        let mut conf = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
        std::io::Write::write_all(&mut conf, b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
            .unwrap();
        if is_root() {
            let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&data).status();
            assert!(chown.unwrap().success(), "chown the cluster's directory");
        }
        #[cfg(unix)]
        std::fs::set_permissions(data.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        server.start_again();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Start the stopped server, and wait until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        let (data, log) = (self.data().to_str().unwrap().to_owned(), log.to_str().unwrap().to_owned());
        self.run("pg_ctl", &["-D", &data, "-l", &log, "-o", &options, "-w", "start"]);
    }

    /// Stop it at once: open connections are closed (`-m fast`), as in an outage.
    pub fn stop(&self) {
        let data = self.data().to_str().unwrap().to_owned();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        let output = command.args(args).output().expect("run a PostgreSQL program");
        assert!(
            output.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.data();
        if data.join("postmaster.pid").exists() {
            let data = data.to_str().unwrap().to_owned();
            let stop =
                std::panic::AssertUnwindSafe(|| self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]));
            let _ = std::panic::catch_unwind(stop);
        }
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}
