//! Bearer tokens: how they are made, shown, hashed and compared.
//!
//! A token is 32 random bytes rendered `kiln_<kind>_<base64url>`. Only its
//! sha256 is stored; the value exists in memory long enough to be handed out
//! once and is never logged or shown by `Debug`.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// What a token lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Full control; one is created with the data directory.
    Admin,
    /// The admin API, for tools.
    Api,
    /// Lets a runner register itself and get a runner token.
    RunnerRegistration,
    /// A registered runner's credential for the runner endpoints.
    Runner,
}

impl TokenKind {
    /// The name used in the database and in the rendered token.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Admin => "admin",
            TokenKind::Api => "api",
            TokenKind::RunnerRegistration => "runner-registration",
            TokenKind::Runner => "runner",
        }
    }

    /// The kind named `name` in the database, if it is one.
    pub fn parse(name: &str) -> Option<TokenKind> {
        match name {
            "admin" => Some(TokenKind::Admin),
            "api" => Some(TokenKind::Api),
            "runner-registration" => Some(TokenKind::RunnerRegistration),
            "runner" => Some(TokenKind::Runner),
            _ => None,
        }
    }
}

/// A token value. `Debug` shows the kind only; [`Token::expose`] is the one
/// way to the value.
#[derive(Clone)]
pub struct Token {
    kind: TokenKind,
    value: String,
}

impl Token {
    /// A new random token of `kind`.
    pub fn generate(kind: TokenKind) -> Result<Token, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes)?;
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Ok(Token {
            kind,
            value: format!("kiln_{}_{encoded}", kind.as_str()),
        })
    }

    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    /// The secret value, to hand to the one party that should hold it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// The hash stored for this token.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.value)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}, <redacted>)", self.kind.as_str())
    }
}

/// The sha256 of a token value, lowercase hex: what the database holds.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash(String);

impl TokenHash {
    /// The hash of a presented value (which need not be a well-formed token).
    pub fn of(presented: &str) -> TokenHash {
        TokenHash(hex::encode(Sha256::digest(presented.as_bytes())))
    }

    /// A hash read back from the database.
    pub(crate) fn from_stored(hex: String) -> TokenHash {
        TokenHash(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Equality that takes the same time wherever the hashes differ.
    pub fn constant_time_eq(&self, other: &TokenHash) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash is not the secret, but there is no reason to print it either.
        f.write_str("TokenHash(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_carry_their_kind() {
        let a = Token::generate(TokenKind::RunnerRegistration).unwrap();
        let b = Token::generate(TokenKind::RunnerRegistration).unwrap();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with("kiln_runner-registration_"));
        // 32 bytes are 43 base64url characters without padding.
        assert_eq!(a.expose().len(), "kiln_runner-registration_".len() + 43);
    }

    #[test]
    fn debug_never_shows_the_value() {
        let token = Token::generate(TokenKind::Admin).unwrap();
        let shown = format!("{token:?} {:?}", token.hash());
        assert!(!shown.contains(token.expose()));
        assert!(!shown.contains(&token.expose()[11..]));
        assert!(!shown.contains(token.hash().as_str()));
    }

    #[test]
    fn hash_comparison() {
        let token = Token::generate(TokenKind::Api).unwrap();
        assert!(token
            .hash()
            .constant_time_eq(&TokenHash::of(token.expose())));
        assert!(!token
            .hash()
            .constant_time_eq(&TokenHash::of("kiln_api_wrong")));
        assert_eq!(TokenKind::parse("runner"), Some(TokenKind::Runner));
        assert_eq!(TokenKind::parse("root"), None);
    }
}
