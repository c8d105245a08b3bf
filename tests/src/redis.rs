//! A Redis server of a test's own (on a free port, its append-only file in a temporary
//! directory, fsynced at every write), which the test may stop and start again: the storage
//! outage tests take down this one, never the machine's.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct OwnRedis {
    dir: tempfile::TempDir,
    pub port: u16,
    server: Option<Child>,
}

impl OwnRedis {
    /// Started; none where `redis-server` is not installed.
    pub fn start() -> Option<Self> {
        Command::new("redis-server").arg("--version").output().ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = OwnRedis { dir: tempfile::tempdir().unwrap(), port, server: None };
        redis.start_again();
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start the stopped server (it reloads what it had from its append-only file), and wait
    /// until it answers.
    pub fn start_again(&mut self) {
        let server = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
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
        let _ = Command::new("redis-cli").args(["-p", &self.port.to_string(), "shutdown"]).output();
        if let Some(mut server) = self.server.take() {
            server.wait().unwrap();
        }
    }

    fn ping(&self) -> bool {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "ping"])
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
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
