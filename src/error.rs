//! How errors reach the user: `error:`, `caused by:` lines, and a `hint:` when we know the fix.

use std::fmt;

/// An error with the fix attached. Wrap with [`HintExt::hint`] where the fix is known.
#[derive(Debug)]
pub struct Hinted {
    pub source: anyhow::Error,
    pub hint: String,
}

impl fmt::Display for Hinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Transparent: the message is the wrapped error's; the hint is printed apart.
        fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for Hinted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.source()
    }
}

pub trait HintExt<T> {
    fn hint(self, hint: impl Into<String>) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> HintExt<T> for Result<T, E> {
    fn hint(self, hint: impl Into<String>) -> anyhow::Result<T> {
        self.map_err(|e| {
            anyhow::Error::new(Hinted {
                source: e.into(),
                hint: hint.into(),
            })
        })
    }
}

/// Errors of core modules that know their own fix implement this.
pub trait Hint {
    fn hint(&self) -> Option<String>;
}

/// The first hint found along the chain.
pub fn find_hint(err: &anyhow::Error) -> Option<String> {
    for cause in err.chain() {
        if let Some(h) = cause.downcast_ref::<Hinted>() {
            return Some(h.hint.clone());
        }
        if let Some(h) = crate::known_hint(cause) {
            return Some(h);
        }
    }
    None
}

/// The chain as the user reads it: the top message, then each distinct cause.
pub fn render(err: &anyhow::Error) -> String {
    let mut out = format!("error: {err}");
    let mut last = err.to_string();
    for cause in err.chain().skip(1) {
        let msg = cause.to_string();
        // Transparent wrappers repeat their source's message; say it once.
        if msg != last && !last.ends_with(&msg) {
            out.push_str(&format!("\ncaused by: {msg}"));
        }
        last = msg;
    }
    if let Some(h) = find_hint(err) {
        out.push_str(&format!("\nhint: {h}"));
    }
    out
}

/// Whether `err` is a bug in devenv rather than something the user can act on: the namespace
/// helper breaking its own protocol (an unreadable plan or report).
pub fn is_internal(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        matches!(
            c.downcast_ref::<crate::runtime::RuntimeError>(),
            Some(crate::runtime::RuntimeError::Helper { .. })
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn a_broken_helper_protocol_is_internal_and_user_errors_are_not() {
        let helper: anyhow::Result<()> = Err(crate::runtime::RuntimeError::Helper {
            message: "unreadable report".into(),
        }
        .into());
        let err = helper.context("running the container").unwrap_err();
        assert!(is_internal(&err));
        let user =
            anyhow::Error::from(crate::runtime::RuntimeError::MountSource { path: "/x".into() });
        assert!(!is_internal(&user));
        assert!(!is_internal(&anyhow::anyhow!("env.toml: bad")));
    }
}
