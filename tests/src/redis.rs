//! A Redis server of a test's own (on a free port, its append-only file in a temporary
//! directory, fsynced at every write), which the test may stop and start again: the storage
//! outage tests take down this one, never the machine's.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct OwnRedis {
    dir: tempfile::TempDir,
    pub port: u16,
    server: Option<Child>,
    /// Served over TLS only: the certificate, its key, and the CA that signed it.
    tls: Option<[std::path::PathBuf; 3]>,
}

impl OwnRedis {
    /// Started; none where `redis-server` is not installed.
    pub fn start() -> Option<Self> {
        Command::new("redis-server").arg("--version").output().ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = OwnRedis { dir: tempfile::tempdir().unwrap(), port, server: None, tls: None };
        redis.start_again();
        Some(redis)
    }

    /// Like [`OwnRedis::start`], serving TLS only (no plain port), with `ca`'s certificate
    /// for 127.0.0.1.
    pub fn start_tls(ca: &crate::tls::TestCa) -> Option<Self> {
        Command::new("redis-server").arg("--version").output().ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let tls = Some([ca.cert_file.clone(), ca.key_file.clone(), ca.ca_file.clone()]);
        let mut redis = OwnRedis { dir: tempfile::tempdir().unwrap(), port, server: None, tls };
        redis.start_again();
        Some(redis)
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` reaching this server, over TLS where it serves TLS.
    fn cli(&self) -> Command {
        let mut cli = Command::new("redis-cli");
        cli.args(["-p", &self.port.to_string()]);
        if let Some([_, _, ca]) = &self.tls {
            cli.arg("--tls").arg("--cacert").arg(ca);
        }
        cli
    }

    /// Start the stopped server (it reloads what it had from its append-only file), and wait
    /// until it answers.
    pub fn start_again(&mut self) {
        let mut server = Command::new("redis-server");
        match &self.tls {
            None => server.args(["--port", &self.port.to_string()]),
            Some([cert, key, ca]) => server
                .args(["--port", "0", "--tls-port", &self.port.to_string(), "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca),
        };
        let server = server
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.server = Some(server);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(Instant::now() < deadline, "redis-server did not answer within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop it, its clients cut off.
    pub fn stop(&mut self) {
        let _ = self.cli().arg("shutdown").output();
        if let Some(mut server) = self.server.take() {
            server.wait().unwrap();
        }
    }

    fn ping(&self) -> bool {
        self.cli().arg("ping").output().is_ok_and(|o| o.stdout.starts_with(b"PONG"))
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}
