//! The one-time registration token: 32 bytes that dom0 armed in Xen and
//! handed to the guest as 64 hexadecimal digits.

/// The token as `int $0x81` carries it: bytes 0-7 in `rdi`, 8-15 in `rsi`,
/// 16-23 in `rdx`, 24-31 in `r10`, each word little-endian.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub [u64; 4]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A token is a secret until used: never print it.
        f.write_str("Token(..)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is {0} characters long; it must be 64 hexadecimal digits")]
    Length(usize),
    #[error("the token has a character that is not a hexadecimal digit at {0}")]
    NotHex(usize),
}

/// Parses the 64 hexadecimal digits `circ tsys authorise` writes (spaces and
/// a trailing newline around them are ignored).
pub fn parse_token(text: &str) -> Result<Token, TokenError> {
    let text = text.trim();
    if text.len() != 64 {
        return Err(TokenError::Length(text.chars().count()));
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        let pair = text
            .get(2 * i..2 * i + 2)
            .ok_or(TokenError::NotHex(2 * i))?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| TokenError::NotHex(2 * i))?;
        if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::NotHex(2 * i));
        }
    }
    let mut words = [0u64; 4];
    for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        *word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
    }
    Ok(Token(words))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_go_little_endian_into_four_words() {
        let hex: String = (0u8..32).map(|b| format!("{b:02x}")).collect();
        let token = parse_token(&format!("{hex}\n")).unwrap();
        assert_eq!(token.0[0], u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]));
        assert_eq!(
            token.0[3],
            u64::from_le_bytes([24, 25, 26, 27, 28, 29, 30, 31])
        );
        assert_eq!(format!("{token:?}"), "Token(..)");
    }

    #[test]
    fn bad_tokens_say_why() {
        assert_eq!(parse_token("none"), Err(TokenError::Length(4)));
        let mut hex = "ab".repeat(32);
        hex.replace_range(10..12, "+1");
        assert_eq!(parse_token(&hex), Err(TokenError::NotHex(10)));
        assert_eq!(parse_token(&"é".repeat(32)), Err(TokenError::NotHex(0)));
    }
}
