//! Object specifiers: which objects a replication group selects, by name.
//!
//! A pattern is an exact name (`LIB/ORDERS`) or a generic name ending in `*`
//! (`LIB/ORD*`; `*` alone selects everything). An object is selected when some
//! include pattern matches it and no exclude pattern does.

/// One include or exclude pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    /// Every name starting with this prefix.
    Prefix(String),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, SelectorError> {
        let invalid = |detail| SelectorError::Invalid {
            pattern: text.to_owned(),
            detail,
        };
        if text.is_empty() {
            return Err(invalid("it is empty"));
        }
        let (stem, generic) = match text.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (text, false),
        };
        if stem.contains('*') {
            return Err(invalid("'*' is only allowed at the end"));
        }
        if stem.len() > engine::limits::OBJECT_NAME_BYTES_MAX {
            return Err(invalid("it is longer than an object name can be"));
        }
        Ok(if generic {
            Pattern::Prefix(stem.to_owned())
        } else {
            Pattern::Exact(stem.to_owned())
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(exact) => name == exact,
            Pattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }
}

/// Include and exclude patterns of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectSelector {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    #[error("HAD0130E object specifier {pattern:?} is invalid: {detail}")]
    Invalid {
        pattern: String,
        detail: &'static str,
    },
}

impl ObjectSelector {
    /// Selects every object.
    pub fn all() -> ObjectSelector {
        ObjectSelector {
            include: vec![Pattern::Prefix(String::new())],
            exclude: Vec::new(),
        }
    }

    pub fn new<S: AsRef<str>>(
        include: &[S],
        exclude: &[S],
    ) -> Result<ObjectSelector, SelectorError> {
        let parse = |list: &[S]| {
            list.iter()
                .map(|p| Pattern::parse(p.as_ref()))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(ObjectSelector {
            include: parse(include)?,
            exclude: parse(exclude)?,
        })
    }

    pub fn selects(&self, name: &str) -> bool {
        self.include.iter().any(|p| p.matches(name))
            && !self.exclude.iter().any(|p| p.matches(name))
    }

    pub fn selects_everything(&self) -> bool {
        self.exclude.is_empty() && self.include.contains(&Pattern::Prefix(String::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(include: &[&str], exclude: &[&str], name: &str, expected: bool) {
        let selector = ObjectSelector::new(include, exclude).unwrap();
        assert_eq!(
            selector.selects(name),
            expected,
            "{include:?} - {exclude:?} on {name:?}"
        );
    }

    #[test]
    fn include_minus_exclude() {
        check(&["*"], &[], "ANY", true);
        check(&["LIB/ORDERS"], &[], "LIB/ORDERS", true);
        check(&["LIB/ORDERS"], &[], "LIB/ORDERS2", false);
        check(&["LIB/ORD*"], &[], "LIB/ORDERS2", true);
        check(&["LIB/ORD*"], &["LIB/ORDTMP*"], "LIB/ORDTMP1", false);
        check(&["LIB/*"], &["LIB/X"], "LIB/Y", true);
        check(&[], &[], "LIB/Y", false);
        assert!(ObjectSelector::all().selects_everything());
        assert!(!ObjectSelector::new(&["*"], &["A"])
            .unwrap()
            .selects_everything());
    }

    #[test]
    fn bad_patterns_are_refused_with_an_id() {
        for bad in ["", "A*B", "**"] {
            let err = Pattern::parse(bad).unwrap_err();
            assert!(err.to_string().starts_with("HAD0130E"), "{err}");
        }
    }
}
