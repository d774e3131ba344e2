//! The people who rate through the web app: a name each and a sign-in token. The token is shown
//! once, when the labeler is added; the store keeps only its SHA-256 ([`Table::Labelers`], key:
//! the name), so a copy of the database signs nobody in.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Result, Workspace, WorkspaceError};
use crate::store::Table;

/// The start of every token (easy to recognize in a password manager or a leaked log).
pub const TOKEN_PREFIX: &str = "rrm_";

/// A labeler as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labeler {
    pub name: String,
    /// SHA-256 of the token, hex.
    pub token_sha256: String,
    pub created_unix: u64,
}

/// SHA-256 of a token, hex.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// A fresh random token: the prefix and 32 random bytes in hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// Checks a labeler name: 1–64 characters of letters, digits, `-`, `_`, `.` (it is stored in
/// every record and shown in pages, so no spaces or markup).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(WorkspaceError::Invalid(format!(
            "'{name}' is not a labeler name: use 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// Adds labeler `name` and returns their token (the only time it exists outside their hands).
/// With `replace`, an existing labeler gets a new token (the old one stops working).
pub fn add(ws: &Workspace, name: &str, replace: bool) -> Result<String> {
    check_name(name)?;
    let store = ws.store();
    if !replace && store.contains(Table::Labelers, name)? {
        return Err(WorkspaceError::Invalid(format!(
            "labeler '{name}' exists already (give them a new token with --replace)"
        )));
    }
    let token = new_token();
    let record = Labeler {
        name: name.to_string(),
        token_sha256: token_hash(&token),
        created_unix: crate::feedback::unix_now(),
    };
    store.put(Table::Labelers, name, &record)?;
    store.flush()?;
    Ok(token)
}

/// Every labeler, by name.
pub fn all(ws: &Workspace) -> Result<Vec<Labeler>> {
    Ok(ws
        .store()
        .scan_lenient::<Labeler>(Table::Labelers, "")?
        .into_iter()
        .map(|(_, l)| l)
        .collect())
}

/// Removes labeler `name` (their feedback stays); false when there was none.
pub fn remove(ws: &Workspace, name: &str) -> Result<bool> {
    let removed = ws.store().remove(Table::Labelers, name)?;
    ws.store().flush()?;
    Ok(removed)
}

/// The labeler whose token this is, if any.
pub fn authenticate(ws: &Workspace, token: &str) -> Result<Option<Labeler>> {
    let token = token.trim();
    if !token.starts_with(TOKEN_PREFIX) || token.len() > 200 {
        return Ok(None);
    }
    let hash = token_hash(token);
    Ok(all(ws)?.into_iter().find(|l| constant_time_eq(l.token_sha256.as_bytes(), hash.as_bytes())))
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::WorkspaceConfig;

    #[test]
    fn tokens_are_stored_as_hashes_and_sign_in() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(&WorkspaceConfig::new(dir.path().join("db"))).unwrap();
        let token = add(&ws, "ann", false).unwrap();
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() == TOKEN_PREFIX.len() + 64);
        let stored = all(&ws).unwrap();
        assert_eq!(stored.len(), 1);
        assert_ne!(stored[0].token_sha256, token);
        assert!(!format!("{stored:?}").contains(&token));
        assert_eq!(authenticate(&ws, &token).unwrap().unwrap().name, "ann");
        assert!(authenticate(&ws, "rrm_00").unwrap().is_none());
        assert!(authenticate(&ws, "").unwrap().is_none());
        assert!(add(&ws, "ann", false).is_err());
        let new = add(&ws, "ann", true).unwrap();
        assert!(authenticate(&ws, &token).unwrap().is_none());
        assert!(authenticate(&ws, &new).unwrap().is_some());
        for bad in ["", "a b", "<script>", &"x".repeat(65)] {
            assert!(add(&ws, bad, false).is_err(), "{bad}");
        }
        assert!(remove(&ws, "ann").unwrap());
        assert!(authenticate(&ws, &new).unwrap().is_none());
    }
}
