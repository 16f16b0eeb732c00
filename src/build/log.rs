//! A build step's output: read from a pipe the container writes to, appended to the env's
//! `build.log`, echoed to stderr on request (`-v`), and its last lines kept for the error a
//! failing step reports.
//!
//! Invariant: the log holds every byte the step wrote, in order; the tail is only for messages.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::thread::JoinHandle;

/// Lines of a failed step's output shown in its error.
pub const TAIL_LINES: usize = 20;

/// The reading end of a step's output, drained on a thread.
pub struct Tee {
    thread: JoinHandle<io::Result<Vec<String>>>,
}

impl Tee {
    /// Drain `read` into `log` (and stderr when `echo`) until every writer has closed it.
    pub fn start(read: OwnedFd, log: std::fs::File, echo: bool) -> Tee {
        let thread = std::thread::spawn(move || copy(std::fs::File::from(read), log, echo));
        Tee { thread }
    }

    /// Wait for the writers to finish; the last [`TAIL_LINES`] lines.
    pub fn finish(self) -> io::Result<Vec<String>> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the log thread panicked")))
    }
}

fn copy(read: impl io::Read, mut log: impl Write, echo: bool) -> io::Result<Vec<String>> {
    let mut reader = BufReader::new(read);
    let mut tail = VecDeque::with_capacity(TAIL_LINES + 1);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Lines split at `\n`; pip's progress redraws with `\r` stay inside one line.
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        log.write_all(&line)?;
        if echo {
            let _ = io::stderr().write_all(&line);
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        let shown = text.rsplit('\r').next().unwrap_or(text).to_string();
        tail.push_back(shown);
        if tail.len() > TAIL_LINES {
            tail.pop_front();
        }
    }
    log.flush()?;
    Ok(tail.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_gets_everything_tail_the_last_lines() {
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let input = format!("{text}progress 10%\rprogress 100%\nno newline at end");
        let mut log = Vec::new();
        let tail = copy(input.as_bytes(), &mut log, false).unwrap();
        assert_eq!(log, input.as_bytes());
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail[0], "line 13");
        assert_eq!(tail[TAIL_LINES - 2], "progress 100%");
        assert_eq!(tail[TAIL_LINES - 1], "no newline at end");
    }

    #[test]
    fn a_pipe_is_drained_until_the_writer_closes() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("build.log");
        let tee = Tee::start(r, fs_err::File::create(&path).unwrap().into_file(), false);
        std::fs::File::from(w).write_all(b"a\nb\n").unwrap();
        assert_eq!(tee.finish().unwrap(), ["a", "b"]);
        assert_eq!(fs_err::read_to_string(&path).unwrap(), "a\nb\n");
    }
}
