//! Config errors: each names its key and line; a list of them is what loading returns.

use std::fmt;
use std::ops::Range;

/// One problem found in a config.
///
/// The message never contains secret material: key parse errors describe the problem
/// ("not valid base64"), not the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending key, with array indices: `service[1].target`,
    /// `node[0].public_key`, `limits.stream_window`. A whole table is named by its own path
    /// (`server`). Empty only for errors that are not about one key (a syntax error the parser
    /// could not place, an unreadable file).
    pub key: String,
    /// 1-based line of the value (or of the table, when a key is missing), when known.
    pub line: Option<usize>,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every error found in one config, in file order.
///
/// `Display` prints one error per line as `FILE:LINE: KEY: MESSAGE` (`FILE: KEY: MESSAGE` when
/// the line is unknown), which is what the daemons' `check` command shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file name used in messages (the `source_name` given to `parse`, or the path).
    pub source_name: String,
    /// The errors, sorted by line; errors without a line come last. Never empty.
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// A list holding a single error.
    pub fn single(source_name: &str, error: ConfigError) -> Self {
        Self {
            source_name: source_name.to_owned(),
            errors: vec![error],
        }
    }

    /// Iterates over the errors.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }

    /// Number of errors (at least one).
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Always false for a list returned by this crate; here for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            match e.line {
                Some(line) => write!(f, "{}:{}: {}", self.source_name, line, e)?,
                None => write!(f, "{}: {}", self.source_name, e)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors during one conversion, turning byte spans into lines.
pub(crate) struct Collector<'a> {
    text: &'a str,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl<'a> Collector<'a> {
    /// A collector for errors in `text` (the config source; empty for code-built configs).
    pub(crate) fn new(text: &'a str) -> Self {
        Self {
            text,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Records a warning at `key`: the config loads, but something deserves a person's look.
    pub(crate) fn warn(
        &mut self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        let line = span.map(|s| self.line_of(s.start));
        self.warnings.push(ConfigError {
            key: key.into(),
            line,
            message: message.into(),
        });
    }

    /// The warnings so far, each as one `FILE:LINE: KEY: MESSAGE` line, as errors print.
    pub(crate) fn take_warnings(&mut self, source_name: &str) -> Vec<String> {
        let mut warnings = std::mem::take(&mut self.warnings);
        warnings.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        warnings
            .iter()
            .map(|e| match e.line {
                Some(line) => format!("{source_name}:{line}: {e}"),
                None => format!("{source_name}: {e}"),
            })
            .collect()
    }

    /// Records an error at `key`, placed at the start of `span` when there is one.
    pub(crate) fn push(
        &mut self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        let line = span.map(|s| self.line_of(s.start));
        self.errors.push(ConfigError {
            key: key.into(),
            line,
            message: message.into(),
        });
    }

    /// 1-based line of a byte offset in the source text.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        line_of(self.text, offset)
    }

    /// True when no error was recorded yet.
    pub(crate) fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    /// The collected errors as a result, sorted by line (stable, so errors on one line keep the
    /// order they were found in).
    pub(crate) fn finish<T>(self, source_name: &str, value: Option<T>) -> Result<T, ConfigErrors> {
        match value {
            Some(v) if self.errors.is_empty() => Ok(v),
            _ => {
                let mut errors = self.errors;
                if errors.is_empty() {
                    // Conversion code returns None only after recording why; this is a guard
                    // so a bug there still yields an error instead of a panic.
                    errors.push(ConfigError {
                        key: String::new(),
                        line: None,
                        message: "invalid configuration".to_owned(),
                    });
                }
                errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
                Err(ConfigErrors {
                    source_name: source_name.to_owned(),
                    errors,
                })
            }
        }
    }
}

/// 1-based line of a byte offset in `text` (offsets past the end count as the last line).
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
