//! How an error reads to an operator: the message and its causes, each
//! once. Our error types put their source's text in their own message
//! (`HAX0001E ...: No space left on device`) and also hand the source on
//! (`Error::source`), so anyhow's `{:#}` said the cause twice.

/// `e`'s message, then each cause whose text the message so far does not
/// already end with, joined by ": ".
pub fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("HAX0001E staging I/O failed: write {path}: {source}")]
    struct Io {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_already_says_is_not_said_again() {
        let io = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let said = io.to_string();
        let e = anyhow::Error::new(Io {
            path: "/s/1.stg".into(),
            source: io,
        })
        .context("DMK0051W session ended");
        assert_eq!(
            describe(&e),
            format!("DMK0051W session ended: HAX0001E staging I/O failed: write /s/1.stg: {said}")
        );
        // A cause the message does not say is kept.
        let e = anyhow::anyhow!("the root").context("the top");
        assert_eq!(describe(&e), "the top: the root");
    }
}
