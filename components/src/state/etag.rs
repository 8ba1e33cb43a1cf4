//! Etag checks shared by the stores that compare etags in process (in-memory, SQLite).

use super::StateError;

/// Whether a write (or delete) may go ahead, given the stored etag (`None` when the key does not
/// exist). `valid` tells whether an etag has the form the store issues.
pub fn check_write(
    key: &str,
    current: Option<&str>,
    etag: Option<&str>,
    must_not_exist: bool,
    valid: impl Fn(&str) -> bool,
) -> Result<(), StateError> {
    match etag {
        Some(given) if !valid(given) => Err(StateError::InvalidEtag(format!(
            "{given:?} is not an etag this store issued (key {key})"
        ))),
        Some(given) => match current {
            Some(stored) if stored == given => Ok(()),
            Some(_) => Err(StateError::EtagMismatch(format!(
                "key {key} has changed since etag {given}"
            ))),
            None => Err(StateError::EtagMismatch(format!(
                "key {key} does not exist (etag {given} given)"
            ))),
        },
        None if must_not_exist && current.is_some() => Err(StateError::EtagMismatch(format!(
            "key {key} already exists and first-write was requested without an etag"
        ))),
        None => Ok(()),
    }
}

/// Etags of the in-memory and SQLite stores are UUIDs.
pub fn is_uuid(etag: &str) -> bool {
    uuid::Uuid::parse_str(etag).is_ok()
}

pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let any = |_: &str| true;
        assert!(check_write("k", None, None, false, any).is_ok());
        assert!(check_write("k", Some("1"), None, false, any).is_ok());
        assert!(check_write("k", Some("1"), Some("1"), false, any).is_ok());
        assert!(matches!(
            check_write("k", Some("1"), Some("2"), false, any),
            Err(StateError::EtagMismatch(_))
        ));
        assert!(matches!(
            check_write("k", None, Some("2"), false, any),
            Err(StateError::EtagMismatch(_))
        ));
        assert!(matches!(
            check_write("k", Some("1"), None, true, any),
            Err(StateError::EtagMismatch(_))
        ));
        assert!(check_write("k", None, None, true, any).is_ok());
        assert!(matches!(
            check_write("k", Some("1"), Some("x"), false, is_uuid),
            Err(StateError::InvalidEtag(_))
        ));
    }
}
