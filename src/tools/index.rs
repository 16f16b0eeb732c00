//! The Python package indexes devenv's resolver and its uv bootstrap read: the user's, never
//! devenv's own choice.
//!
//! The default index (where every Python package comes from) is, first set wins:
//! `UV_DEFAULT_INDEX`, `UV_INDEX_URL`, `PIP_INDEX_URL` (the variables uv and pip read), then
//! `[python] index` in the user's config.toml, then the default this build of devenv was given
//! by its installer (`DEVENV_DEFAULT_INDEX` when it was compiled). With none of them, the
//! resolver passes no index and uv uses its own default; only fetching the pinned uv itself
//! needs one to be named.
//!
//! Recipes name the other indexes they need (PyTorch's CPU and CUDA wheel indexes) by a name and
//! a path, `pytorch/cu124`, that the user's `[python.indexes]` table maps to a URL: env.toml and
//! env.lock record the name, so a lock made behind one mirror stays the same lock behind another.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Variables read for the default index, in order (uv's own order, then pip's).
pub const VARIABLES: [&str; 3] = ["UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL"];

/// The default index this build carries, set by whoever compiled it (`scripts/release` and
/// `scripts/test` pass the index the build machine's pip uses).
const BUILT_IN: Option<&str> = option_env!("DEVENV_DEFAULT_INDEX");

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("{origin}: `{value}` is not an index URL (expected http:// or https://…)")]
    BadUrl { origin: String, value: String },
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{wanted_by} installs from the index `{name}`, which your configuration does not name")]
    Unnamed { name: String, wanted_by: String },
    #[error("no Python package index is configured, and {needed}")]
    NoDefault { needed: String },
}

impl crate::error::Hint for IndexError {
    fn hint(&self) -> Option<String> {
        match self {
            IndexError::BadUrl { .. } | IndexError::File { .. } => {
                Some("an index is its simple API's URL, e.g. \"https://mirror.lan/simple\"".into())
            }
            IndexError::Unnamed { name, .. } => Some(format!(
                "add it to {}: [python.indexes] {name} = \"https://…\" (for `pytorch`, the \
                 base of PyTorch's wheel indexes: the --index-url of its install page without \
                 the last /cpu or /cuXXX), or choose the variant `pypi`",
                crate::user_config::path_text()
            )),
            IndexError::NoDefault { .. } => Some(format!(
                "set PIP_INDEX_URL (or [python] index in {}) to your package index's simple URL",
                crate::user_config::path_text()
            )),
        }
    }
}

/// Where the default index was set, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Variable(&'static str),
    UserConfig,
    BuiltIn,
}

/// The indexes in effect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Indexes {
    /// The index packages come from, when one is set; `None`: uv's own default.
    pub default: Option<(String, Origin)>,
    /// `[python.indexes]`: name → URL.
    pub named: BTreeMap<String, String>,
}

impl Indexes {
    /// From the process's environment and the user's config.toml.
    pub fn load() -> Result<Indexes, IndexError> {
        let config = crate::user_config::read().map_err(|e| IndexError::File {
            path: e.path.clone(),
            message: e.message.clone(),
        })?;
        Indexes::from_parts(
            |k| std::env::var(k).ok(),
            config.map(|f| (f.text.as_str(), f.path.as_path())),
            BUILT_IN,
        )
    }

    fn from_parts(
        var: impl Fn(&str) -> Option<String>,
        config: Option<(&str, &Path)>,
        built_in: Option<&str>,
    ) -> Result<Indexes, IndexError> {
        let mut out = Indexes::default();
        if let Some((text, path)) = config {
            let file_err = |message: String| IndexError::File {
                path: path.to_path_buf(),
                message,
            };
            // The file's syntax is the registry settings' to report; a table that does not
            // parse here is ours.
            if let Ok(table) = text.parse::<toml::Table>()
                && let Some(python) = table.get("python")
            {
                let python = python
                    .as_table()
                    .ok_or_else(|| file_err("[python] must be a table".into()))?;
                for (key, value) in python {
                    match (key.as_str(), value) {
                        ("index", toml::Value::String(url)) => {
                            let origin = format!("{}: [python] index", path.display());
                            out.default = Some((checked(&origin, url)?, Origin::UserConfig));
                        }
                        ("indexes", toml::Value::Table(named)) => {
                            for (name, url) in named {
                                let origin = format!("{}: [python.indexes] {name}", path.display());
                                let url = url.as_str().ok_or_else(|| IndexError::BadUrl {
                                    origin: origin.clone(),
                                    value: url.to_string(),
                                })?;
                                out.named.insert(name.clone(), checked(&origin, url)?);
                            }
                        }
                        ("index", _) => {
                            return Err(file_err("[python] index must be a string".into()));
                        }
                        ("indexes", _) => {
                            return Err(file_err("[python.indexes] must be a table".into()));
                        }
                        (other, _) => {
                            return Err(file_err(format!(
                                "[python] has no key `{other}` (known: index, indexes)"
                            )));
                        }
                    }
                }
            }
        }
        for name in VARIABLES {
            if let Some(url) = var(name).filter(|v| !v.trim().is_empty()) {
                out.default = Some((checked(name, url.trim())?, Origin::Variable(name)));
                return Ok(out);
            }
        }
        if out.default.is_none()
            && let Some(url) = built_in.filter(|u| !u.is_empty())
        {
            out.default = Some((checked("DEVENV_DEFAULT_INDEX", url)?, Origin::BuiltIn));
        }
        Ok(out)
    }

    /// The URL of `reference` (`NAME` or `NAME/PATH`), wanted by `wanted_by` (for the message).
    pub fn resolve(&self, reference: &str, wanted_by: &str) -> Result<String, IndexError> {
        let (name, path) = reference.split_once('/').unwrap_or((reference, ""));
        let base = self.named.get(name).ok_or_else(|| IndexError::Unnamed {
            name: name.to_string(),
            wanted_by: wanted_by.to_string(),
        })?;
        Ok(if path.is_empty() {
            base.clone()
        } else {
            format!(
                "{}/{}",
                base.trim_end_matches('/'),
                path.trim_start_matches('/')
            )
        })
    }

    /// The default index, for fetching the pinned uv: `needed` says what for.
    pub fn require_default(&self, needed: &str) -> Result<&str, IndexError> {
        self.default
            .as_ref()
            .map(|(u, _)| u.as_str())
            .ok_or_else(|| IndexError::NoDefault {
                needed: needed.to_string(),
            })
    }
}

fn checked(origin: &str, url: &str) -> Result<String, IndexError> {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() > "https://".len()
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(url.trim_end_matches('/').to_string())
    } else {
        Err(IndexError::BadUrl {
            origin: origin.to_string(),
            value: url.to_string(),
        })
    }
}

/// `url` with any `user:password@` replaced by `…@`, for messages and logs.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://…@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// One file a simple-API project page lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub filename: String,
    /// Absolute.
    pub url: String,
}

/// The `Accept` header for a project page: PEP 691's JSON first, PEP 503's HTML after.
pub const ACCEPT: &str = "application/vnd.pypi.simple.v1+json, text/html;q=0.2";

/// The project page of `project` on `index`.
pub fn project_url(index: &str, project: &str) -> String {
    format!("{}/{project}/", index.trim_end_matches('/'))
}

/// The files of a project page, JSON (PEP 691) or HTML (PEP 503), fetched from `page_url`.
/// Links are made absolute against `page_url`; anything unreadable lists nothing.
pub fn parse_project_page(body: &str, page_url: &str) -> Vec<Listed> {
    #[derive(serde::Deserialize)]
    struct Page {
        files: Vec<File>,
    }
    #[derive(serde::Deserialize)]
    struct File {
        filename: String,
        url: String,
    }
    if let Ok(page) = serde_json::from_str::<Page>(body) {
        return page
            .files
            .into_iter()
            .map(|f| Listed {
                filename: f.filename,
                url: join(page_url, &f.url),
            })
            .collect();
    }
    // HTML: every `<a href="…">NAME</a>`.
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(start) = rest.find("<a ") {
        rest = &rest[start + 3..];
        let Some(tag_end) = rest.find('>') else { break };
        let attrs = &rest[..tag_end];
        let Some(close) = rest.find("</a>") else {
            break;
        };
        let text = rest[tag_end + 1..close].trim();
        let href = attrs.find("href=").and_then(|i| {
            let v = &attrs[i + 5..];
            let quote = v.chars().next().filter(|q| *q == '"' || *q == '\'')?;
            let v = &v[1..];
            v.find(quote).map(|end| &v[..end])
        });
        if let Some(href) = href {
            let href = href.replace("&amp;", "&");
            out.push(Listed {
                filename: text.to_string(),
                url: join(page_url, &href),
            });
        }
        rest = &rest[close + 4..];
    }
    out
}

/// `link` made absolute against `base` (an `http(s)://` URL), as a browser would for the forms
/// a package index writes: absolute, scheme-relative, host-relative and path-relative.
pub fn join(base: &str, link: &str) -> String {
    if link.starts_with("http://") || link.starts_with("https://") {
        return link.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    if let Some(l) = link.strip_prefix("//") {
        return format!("{scheme}://{l}");
    }
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let origin = format!("{scheme}://{}", &rest[..authority_end]);
    if link.starts_with('/') {
        return format!("{origin}{link}");
    }
    // Relative to the page's directory, with `.` and `..` segments applied.
    let path = rest[authority_end..].split(['?', '#']).next().unwrap_or("");
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let mut segments: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
    let (link_path, tail) = match link.find(['?', '#']) {
        Some(i) => (&link[..i], &link[i..]),
        None => (link, ""),
    };
    let parts: Vec<&str> = link_path.split('/').collect();
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "." => {}
            ".." => {
                segments.pop();
            }
            "" if i + 1 < parts.len() => {}
            s => segments.push(s),
        }
    }
    format!("{origin}/{}{tail}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const CONFIG: &str = "[python]\nindex = \"https://mirror.example/simple/\"\n\
                          [python.indexes]\npytorch = \"https://torch.example/whl\"\n";

    #[test]
    fn a_variable_wins_over_config_toml_and_config_toml_over_the_built_in_default() {
        let path = Path::new("/c/config.toml");
        let i = Indexes::from_parts(
            vars(&[("PIP_INDEX_URL", "https://pip.example/simple")]),
            Some((CONFIG, path)),
            Some("https://built.example/simple"),
        )
        .expect("loads");
        assert_eq!(
            i.default,
            Some((
                "https://pip.example/simple".into(),
                Origin::Variable("PIP_INDEX_URL")
            ))
        );
        assert_eq!(i.named["pytorch"], "https://torch.example/whl");
        let i = Indexes::from_parts(vars(&[]), Some((CONFIG, path)), Some("https://b.example"))
            .expect("loads");
        assert_eq!(
            i.default,
            Some(("https://mirror.example/simple".into(), Origin::UserConfig))
        );
        let i = Indexes::from_parts(vars(&[]), None, Some("https://b.example/simple")).unwrap();
        assert_eq!(
            i.default,
            Some(("https://b.example/simple".into(), Origin::BuiltIn))
        );
        let i = Indexes::from_parts(vars(&[("UV_INDEX_URL", " ")]), None, None).unwrap();
        assert_eq!(i.default, None);
        let first = Indexes::from_parts(
            vars(&[
                ("UV_DEFAULT_INDEX", "https://uv.example/simple"),
                ("PIP_INDEX_URL", "https://pip.example/simple"),
            ]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            first.default.unwrap().1,
            Origin::Variable("UV_DEFAULT_INDEX")
        );
    }

    #[test]
    fn bad_settings_are_errors_naming_where_they_were_written() {
        let path = Path::new("/c/config.toml");
        for (text, wanted) in [
            (
                "[python]\nindex = \"mirror.example/simple\"\n",
                "[python] index",
            ),
            ("[python]\nindex = 3\n", "must be a string"),
            ("[python]\nindexs = {}\n", "no key `indexs`"),
            ("python = 1\n", "must be a table"),
            (
                "[python.indexes]\npytorch = 1\n",
                "[python.indexes] pytorch",
            ),
        ] {
            let e = Indexes::from_parts(vars(&[]), Some((text, path)), None).unwrap_err();
            assert!(e.to_string().contains(wanted), "{text}: {e}");
            assert!(crate::error::Hint::hint(&e).is_some());
        }
        let e = Indexes::from_parts(vars(&[("PIP_INDEX_URL", "ftp://x")]), None, None).unwrap_err();
        assert!(e.to_string().starts_with("PIP_INDEX_URL: `ftp://x`"), "{e}");
    }

    #[test]
    fn a_named_index_takes_its_path_and_an_unnamed_one_says_what_to_add() {
        let i = Indexes::from_parts(vars(&[]), Some((CONFIG, Path::new("/c"))), None).unwrap();
        assert_eq!(
            i.resolve("pytorch/cu124", "torch").unwrap(),
            "https://torch.example/whl/cu124"
        );
        assert_eq!(
            i.resolve("pytorch", "torch").unwrap(),
            "https://torch.example/whl"
        );
        let e = i.resolve("jax/cuda", "jax's variant `cuda`").unwrap_err();
        assert_eq!(
            e.to_string(),
            "jax's variant `cuda` installs from the index `jax`, which your configuration does not name"
        );
        assert!(
            crate::error::Hint::hint(&e)
                .unwrap()
                .contains("[python.indexes] jax =")
        );
        let none = Indexes::default();
        assert!(matches!(
            none.require_default("devenv fetches its pinned uv from it"),
            Err(IndexError::NoDefault { .. })
        ));
    }

    #[test]
    fn credentials_in_an_index_url_stay_out_of_messages() {
        assert_eq!(
            redacted("https://me:tok@mirror.example/simple/x/"),
            "https://…@mirror.example/simple/x/"
        );
        assert_eq!(
            redacted("https://mirror.example/a@b"),
            "https://mirror.example/a@b"
        );
    }

    #[test]
    fn links_on_a_project_page_are_made_absolute_as_a_browser_would() {
        let page = "https://index.example/simple/uv/";
        assert_eq!(
            join(page, "https://files.example/a.whl"),
            "https://files.example/a.whl"
        );
        assert_eq!(
            join(page, "//files.example/a.whl"),
            "https://files.example/a.whl"
        );
        assert_eq!(
            join(page, "/packages/a.whl#sha256=00"),
            "https://index.example/packages/a.whl#sha256=00"
        );
        assert_eq!(join(page, "a.whl"), "https://index.example/simple/uv/a.whl");
        assert_eq!(
            join(page, "../../packages/x/a.whl#sha256=00"),
            "https://index.example/packages/x/a.whl#sha256=00"
        );
        assert_eq!(
            join("http://127.0.0.1:8080/simple/uv/", "./a.whl"),
            "http://127.0.0.1:8080/simple/uv/a.whl"
        );
    }

    #[test]
    fn a_project_page_is_read_as_json_or_as_html() {
        let page = "https://index.example/simple/uv/";
        let json = r#"{"meta":{"api-version":"1.1"},"name":"uv","files":[
            {"filename":"uv-1-py3-none-any.whl","url":"../../f/uv-1-py3-none-any.whl","hashes":{}}]}"#;
        assert_eq!(
            parse_project_page(json, page),
            [Listed {
                filename: "uv-1-py3-none-any.whl".into(),
                url: "https://index.example/f/uv-1-py3-none-any.whl".into()
            }]
        );
        let html = "<!DOCTYPE html><html><body><h1>Links for uv</h1>\n\
            <a href=\"/f/uv-1.tar.gz#sha256=ab\" data-requires-python=\"&gt;=3.8\">uv-1.tar.gz</a><br/>\n\
            <a data-x='1' href='uv-1-py3-none-any.whl?a=1&amp;b=2'> uv-1-py3-none-any.whl </a>\n\
            <a name=\"no-href\">x</a><a href=\"broken";
        assert_eq!(
            parse_project_page(html, page),
            [
                Listed {
                    filename: "uv-1.tar.gz".into(),
                    url: "https://index.example/f/uv-1.tar.gz#sha256=ab".into()
                },
                Listed {
                    filename: "uv-1-py3-none-any.whl".into(),
                    url: "https://index.example/simple/uv/uv-1-py3-none-any.whl?a=1&b=2".into()
                },
            ]
        );
        assert!(parse_project_page("not a page", page).is_empty());
    }
}
