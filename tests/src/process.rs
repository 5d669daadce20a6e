//! Daemon processes, for the tests that run the real binaries (`CARGO_BIN_EXE_*` is known only
//! to the binary's own crate, so those tests pass the command in).

use std::process::{Child, Command};

/// A running daemon, killed (SIGKILL) and reaped when dropped, so a test that fails leaves no
/// process behind.
#[derive(Debug)]
pub struct Daemon(Child);

impl Daemon {
    /// Starts `command`.
    pub fn spawn(command: &mut Command) -> Daemon {
        Daemon(command.spawn().expect("start the daemon"))
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Kills it now (SIGKILL, what a crash looks like) and reaps it.
    pub fn kill(&mut self) {
        self.0.kill().expect("SIGKILL the daemon");
        self.0.wait().expect("reap the daemon");
    }

    /// Asks it to stop (SIGTERM: a drain).
    pub fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {}", self.id());
    }

    /// Its standard error, when it was spawned with a pipe there.
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.0.stderr.take()
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.0.wait().expect("wait for the daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
