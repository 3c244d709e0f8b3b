//! Text made safe for logs and error messages (the bottom floor: it imports nothing of the
//! crate): an error with its chain of causes, and outside text cut short and escaped.

/// An error followed by its sources, `outer: inner: root`, for logs: a store or broker
/// error keeps its cause all the way to the log line.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// Text from outside (a message, a request) as it may appear in a log line, an error message
/// or an operator command's output: at most 64 characters, control characters and quotes
/// escaped, so it can neither forge a line nor flood one.
pub fn short(text: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = text
        .chars()
        .take(MAX)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > MAX {
        out.push('…');
    }
    out
}
