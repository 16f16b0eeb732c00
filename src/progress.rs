//! The narrow reporting interface core modules use; `ui` implements it.
//!
//! Core code never prints. It reports status lines and byte progress through [`Reporter`], so
//! the same pull runs under a progress bar, plain lines, `-q`, or a test with [`Silent`].

/// One long step's progress (a layer download, a build).
pub trait Bar: Send + Sync {
    /// `n` more units (bytes) done.
    fn inc(&self, n: u64);
    /// The step ended; `message` says how (`done`, `cached`).
    fn finish(&self, message: &str);
}

pub trait Reporter: Sync {
    /// A cargo-style line: `Pulling docker.io/library/python:3.11-slim`.
    fn status(&self, verb: &str, message: &str);
    /// A warning the user should read (not an error).
    fn warn(&self, message: &str);
    /// Something worth knowing that needs no action (`note: …`); quiet hides it.
    fn note(&self, _message: &str) {}
    /// A bar for one download of `total` bytes, when known.
    fn bar(&self, label: &str, total: Option<u64>) -> Box<dyn Bar>;
    /// A bar for another kind of step: `doing` while it runs (`Packing`), `done` when it ends.
    fn step_bar(
        &self,
        _doing: &'static str,
        _done: &'static str,
        label: &str,
        total: Option<u64>,
    ) -> Box<dyn Bar> {
        self.bar(label, total)
    }
    /// The bar summing several steps (all layers of a pull); only a terminal shows one.
    fn total_bar(&self, _total: u64) -> Box<dyn Bar> {
        Box::new(NoBar)
    }
}

/// Reports nothing; for tests and `-q`.
pub struct Silent;

struct NoBar;

impl Bar for NoBar {
    fn inc(&self, _: u64) {}
    fn finish(&self, _: &str) {}
}

impl Reporter for Silent {
    fn status(&self, _: &str, _: &str) {}
    fn warn(&self, _: &str) {}
    fn bar(&self, _: &str, _: Option<u64>) -> Box<dyn Bar> {
        Box::new(NoBar)
    }
}
