//! Identifier validation. Container and exec ids become file names in the bundle and runtime
//! state paths, so anything that could escape a directory is refused before it is used.

use crate::error::{Error, Result};

/// containerd's own identifier limit.
pub const MAX_ID_LEN: usize = 76;

/// Accepts what containerd's `identifiers.Validate` accepts: alphanumeric components joined by
/// single `.`, `_` or `-`, at most 76 bytes. That rules out `/`, `..`, leading dots and spaces.
pub fn validate(kind: &str, id: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "invalid {kind} {id:?}: {why}"
        )))
    };
    if id.is_empty() {
        return bad("must not be empty");
    }
    if id.len() > MAX_ID_LEN {
        return bad(&format!("longer than {MAX_ID_LEN} characters"));
    }
    let mut prev_sep = true;
    for c in id.chars() {
        if c.is_ascii_alphanumeric() {
            prev_sep = false;
        } else if matches!(c, '.' | '_' | '-') && !prev_sep {
            prev_sep = true;
        } else {
            return bad("must match ^[A-Za-z0-9]+([._-][A-Za-z0-9]+)*$");
        }
    }
    if prev_sep {
        return bad("must not end with a separator");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_containerd_ids() {
        for id in ["a", "c1", "my-container_1.2", "0123456789abcdef"] {
            validate("id", id).unwrap();
        }
        validate("id", &"x".repeat(76)).unwrap();
    }

    #[test]
    fn refuses_escapes_and_junk() {
        for id in [
            "", "/", "../x", "..", "a/b", ".a", "a.", "a..b", "a b", "é", "a\0",
        ] {
            assert!(validate("id", id).is_err(), "{id:?} accepted");
        }
        assert!(validate("id", &"x".repeat(77)).is_err());
    }
}
