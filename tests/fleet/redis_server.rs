//! A private `redis-server` for a test: its own port and directory, no
//! persistence; killed (SIGKILL) and started again on the same port to
//! simulate an outage. Never the shared Redis on 6379.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct RedisServer {
    bin: PathBuf,
    dir: PathBuf,
    pub(crate) port: u16,
    child: Option<Child>,
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// A started server, or `None` (the test skips) when `redis-server` is
    /// not installed, unless `REQUIRE_REDIS` is set: then the test fails.
    pub(crate) fn start_or_skip(test: &str) -> Option<Self> {
        let Some(bin) = which("redis-server") else {
            assert!(
                std::env::var_os("REQUIRE_REDIS").is_none(),
                "REQUIRE_REDIS is set but redis-server is not on the PATH"
            );
            eprintln!("SKIPPED {test}: redis-server not found (apt-get install -y redis-server)");
            return None;
        };
        let dir = std::env::temp_dir().join(format!(
            "tower-recovery-redis-{}-{}",
            std::process::id(),
            test
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            bin,
            dir,
            port: free_port(),
            child: None,
        };
        server.start();
        Some(server)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts it (again, on the same port) and waits until it answers.
    pub(crate) fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(&self.bin)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &self.dir.display().to_string(),
                "--logfile",
                &self.dir.join("redis.log").display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                stream
                    .set_read_timeout(Some(Duration::from_secs(1)))
                    .unwrap();
                if stream.write_all(b"PING\r\n").is_ok() {
                    let mut buf = [0u8; 7];
                    if stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, and waits until it is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
