//! Redis servers of a test's own, for what must not touch the shared one on port 6379 (restarts,
//! `FLUSHALL`, killed connections). Each runs in a temporary directory: whatever it writes (an
//! append-only file, an RDB snapshot) stays out of the repository.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{dead_port, eventually, temp_dir};

pub struct RedisProcess {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisProcess {
    /// With an append-only file in `dir`: data survives a restart on the same port and dir. The
    /// directory is removed when the server is dropped.
    pub fn start(port: u16, dir: &Path) -> RedisProcess {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        RedisProcess { child, port, dir: dir.to_path_buf() }
    }

    /// A fresh server on a free port and a temporary directory, answering.
    pub async fn spawn() -> RedisProcess {
        let redis = RedisProcess::start(dead_port(), &temp_dir("redis"));
        redis.answering().await;
        redis
    }

    /// Waits (bounded) until the server answers `PING`.
    pub async fn answering(&self) {
        let url = self.url();
        eventually("redis answers", Duration::from_secs(10), || redis_answers(&url)).await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test's Redis")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn redis_answers(url: &str) -> bool {
    match redis::Client::open(url) {
        Ok(c) => match c.get_multiplexed_async_connection().await {
            Ok(mut conn) => redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok(),
            Err(_) => false,
        },
        Err(_) => false,
    }
}
