//! The only place that prints. Status lines and progress go to stderr, cargo-style; stdout is the
//! container command's and `--json`'s. Bars only on a terminal; plain lines otherwise; nothing
//! with `-q`. `NO_COLOR` is respected.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::{Bar, Reporter};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

pub struct Ui {
    verbosity: Verbosity,
    bars: Option<MultiProgress>,
    color: bool,
}

impl Ui {
    pub fn new(verbosity: Verbosity, progress: bool) -> Ui {
        let tty = std::io::stderr().is_terminal();
        let color = tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let bars = (tty && progress && verbosity != Verbosity::Quiet)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        Ui {
            verbosity,
            bars,
            color,
        }
    }

    pub fn verbose(&self) -> bool {
        self.verbosity == Verbosity::Verbose
    }

    pub fn quiet(&self) -> bool {
        self.verbosity == Verbosity::Quiet
    }

    fn line(&self, text: &str) {
        match &self.bars {
            Some(m) => {
                let _ = m.println(text);
            }
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }

    fn verb(&self, verb: &str, style: &str) -> String {
        if self.color {
            format!("\x1b[{style}m{verb:>12}\x1b[0m")
        } else {
            format!("{verb:>12}")
        }
    }

    /// `     note: …`, shown unless quiet.
    pub fn note(&self, message: &str) {
        if !self.quiet() {
            self.line(&format!("{}: {message}", self.label("note", "1;36")));
        }
    }

    fn label(&self, word: &str, style: &str) -> String {
        if self.color {
            format!("\x1b[{style}m{word}\x1b[0m")
        } else {
            word.to_string()
        }
    }

    /// Printed even with `-q`: errors always reach the user.
    pub fn error(&self, rendered: &str) {
        let mut text = rendered.to_string();
        if self.color {
            text = text.replacen("error:", "\x1b[1;31merror\x1b[0m:", 1);
            text = text.replace("\nhint:", "\n\x1b[1;32mhint\x1b[0m:");
        }
        self.line(&text);
    }
}

impl Reporter for Ui {
    fn total_bar(&self, total: u64) -> Box<dyn Bar> {
        let Some(m) = &self.bars else {
            return crate::progress::Silent.bar("", None);
        };
        let pb = m.add(ProgressBar::new(total));
        let style = ProgressStyle::with_template(
            "{prefix:>12.green.bold} [{bar:30}] {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        pb.set_style(style);
        pb.set_prefix("Total");
        pb.enable_steady_tick(Duration::from_millis(200));
        Box::new(TotalBar(pb))
    }

    fn status(&self, verb: &str, message: &str) {
        if !self.quiet() {
            self.line(&format!("{} {message}", self.verb(verb, "1;32")));
        }
    }

    fn warn(&self, message: &str) {
        self.line(&format!("{}: {message}", self.label("warning", "1;33")));
    }

    fn note(&self, message: &str) {
        Ui::note(self, message)
    }

    fn bar(&self, label: &str, total: Option<u64>) -> Box<dyn Bar> {
        self.step_bar("Fetching", "Fetched", label, total)
    }

    fn step_bar(
        &self,
        doing: &'static str,
        done: &'static str,
        label: &str,
        total: Option<u64>,
    ) -> Box<dyn Bar> {
        match &self.bars {
            Some(m) => {
                let pb = m.add(ProgressBar::new(total.unwrap_or(0)));
                let style = ProgressStyle::with_template(
                    "{prefix:>12.cyan.bold} {msg:20} [{bar:30}] {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                pb.set_style(style);
                pb.set_prefix(doing);
                pb.set_message(label.to_string());
                pb.enable_steady_tick(Duration::from_millis(200));
                Box::new(TtyBar {
                    pb,
                    multi: m.clone(),
                    label: label.to_string(),
                    done,
                })
            }
            None => Box::new(PlainBar {
                label: label.to_string(),
                print: !self.quiet(),
                done,
            }),
        }
    }
}

struct TtyBar {
    pb: ProgressBar,
    multi: MultiProgress,
    label: String,
    /// The verb of the line left when it ends.
    done: &'static str,
}

impl Bar for TtyBar {
    fn inc(&self, n: u64) {
        self.pb.inc(n);
    }
    fn finish(&self, message: &str) {
        self.pb.finish_and_clear();
        self.multi.remove(&self.pb);
        let _ = self
            .multi
            .println(format!("{:>12} {} ({message})", self.done, self.label));
    }
}

struct TotalBar(ProgressBar);

impl Bar for TotalBar {
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }
    fn finish(&self, _: &str) {
        self.0.finish_and_clear();
    }
}

/// Without a terminal a bar is one line when the step ends.
struct PlainBar {
    label: String,
    print: bool,
    done: &'static str,
}

impl Bar for PlainBar {
    fn inc(&self, _: u64) {}
    fn finish(&self, message: &str) {
        if self.print {
            let _ = writeln!(
                std::io::stderr().lock(),
                "{:>12} {} ({message})",
                self.done,
                self.label
            );
        }
    }
}
