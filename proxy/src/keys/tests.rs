#![expect(clippy::unwrap_used, reason = "tests")]

use proptest::prelude::*;
use secrecy::SecretSlice;

use super::*;

const KINDS: [TokenKind; 2] = [TokenKind::ApiKey, TokenKind::IncidentGrant];
const ENVS: [TokenEnv; 3] = [TokenEnv::Live, TokenEnv::Test, TokenEnv::Dev];

fn hasher(pepper: &[u8]) -> KeyHasher {
    KeyHasher::new(&SecretSlice::from(pepper.to_vec())).unwrap()
}

/// A valid token whose body characters are `body` (checksum recomputed).
fn with_valid_checksum(head_and_random: &str) -> String {
    let checksum = crc32fast::hash(head_and_random.as_bytes());
    format!("{head_and_random}{}", encode_checksum(checksum))
}

#[test]
fn generated_tokens_parse_back_for_every_kind_and_env() {
    for kind in KINDS {
        for env in ENVS {
            let token = PlainToken::generate(kind, env);
            let secret = token.expose_secret();
            let header = format!("{}_{}_", kind.prefix(), env.as_str());
            assert!(secret.starts_with(&header), "{secret}");
            assert_eq!(secret.len(), header.len() + RANDOM_LEN + CHECKSUM_LEN);

            let parsed = PlainToken::parse(secret).unwrap();
            assert_eq!(parsed.kind(), kind);
            assert_eq!(parsed.env(), env);
            assert_eq!(parsed.expose_secret(), secret);
            assert_eq!(
                parsed.lookup_prefix(),
                &secret[..header.len() + LOOKUP_RANDOM_LEN]
            );
            assert_eq!(token.lookup_prefix(), parsed.lookup_prefix());
            assert!(looks_like_token(secret));
        }
    }
}

#[test]
fn generated_tokens_differ() {
    let a = PlainToken::generate(TokenKind::ApiKey, TokenEnv::Live);
    let b = PlainToken::generate(TokenKind::ApiKey, TokenEnv::Live);
    assert_ne!(a.expose_secret(), b.expose_secret());
    assert_ne!(a.lookup_prefix(), b.lookup_prefix());
}

#[test]
fn any_single_changed_character_fails_the_checksum() {
    let token = PlainToken::generate(TokenKind::ApiKey, TokenEnv::Live);
    let secret = token.expose_secret();
    let body_start = "pk_live_".len();
    for i in body_start..secret.len() {
        let mut bytes = secret.as_bytes().to_vec();
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).unwrap();
        assert_eq!(
            PlainToken::parse(&typo).unwrap_err(),
            TokenFormatError::ChecksumMismatch,
            "position {i}"
        );
    }
}

#[test]
fn checksum_covers_the_header() {
    let token = PlainToken::generate(TokenKind::ApiKey, TokenEnv::Live);
    let swapped = token.expose_secret().replacen("pk_live_", "pk_test_", 1);
    assert_eq!(
        PlainToken::parse(&swapped).unwrap_err(),
        TokenFormatError::ChecksumMismatch
    );
    let swapped = token.expose_secret().replacen("pk_", "pg_", 1);
    assert_eq!(
        PlainToken::parse(&swapped).unwrap_err(),
        TokenFormatError::ChecksumMismatch
    );
}

#[test]
fn malformed_tokens_are_refused_with_distinct_errors() {
    let random = "a".repeat(RANDOM_LEN);
    let valid = with_valid_checksum(&format!("pk_live_{random}"));
    assert!(PlainToken::parse(&valid).is_ok());

    let cases = [
        (String::new(), TokenFormatError::Malformed),
        ("pk".to_owned(), TokenFormatError::Malformed),
        ("pk_live".to_owned(), TokenFormatError::Malformed),
        (
            valid.replacen("pk_", "xk_", 1),
            TokenFormatError::UnknownProduct,
        ),
        (
            valid.replacen("pk_", "PK_", 1),
            TokenFormatError::UnknownProduct,
        ),
        (
            valid.replacen("_live_", "_prod_", 1),
            TokenFormatError::UnknownEnvironment,
        ),
        (
            valid.replacen("_live_", "_LIVE_", 1),
            TokenFormatError::UnknownEnvironment,
        ),
        (
            valid[..valid.len() - 1].to_owned(),
            TokenFormatError::WrongLength,
        ),
        (format!("{valid}0"), TokenFormatError::WrongLength),
        ("pk_live_".to_owned(), TokenFormatError::WrongLength),
        (
            with_valid_checksum(&format!("pk_live_{}-", "a".repeat(RANDOM_LEN - 1))),
            TokenFormatError::InvalidCharacter,
        ),
        (
            with_valid_checksum(&format!("pk_live_{}_", "a".repeat(RANDOM_LEN - 1))),
            TokenFormatError::InvalidCharacter,
        ),
        (
            format!("pk_live_{}é", "a".repeat(RANDOM_LEN + CHECKSUM_LEN - 2)),
            TokenFormatError::InvalidCharacter,
        ),
        (
            format!("pk_live_{random}zzzzzz"),
            TokenFormatError::ChecksumMismatch,
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(
            PlainToken::parse(&input).unwrap_err(),
            expected,
            "{input:?}"
        );
        assert!(!looks_like_token(&input));
    }
}

#[test]
fn checksum_encoding_round_trips_at_the_extremes() {
    for value in [0, 1, 61, 62, 0xDEAD_BEEF, u32::MAX] {
        let encoded = encode_checksum(value);
        assert_eq!(encoded.len(), CHECKSUM_LEN);
        assert_eq!(decode_checksum(&encoded), Some(value));
    }
    assert_eq!(encode_checksum(0), "000000");
    // 62^6 - 1 does not fit in a u32.
    assert_eq!(decode_checksum("zzzzzz"), None);
}

#[test]
fn verify_accepts_the_right_token_only() {
    let hasher = hasher(&[7; 32]);
    let token = PlainToken::generate(TokenKind::ApiKey, TokenEnv::Live);
    let other = PlainToken::generate(TokenKind::ApiKey, TokenEnv::Live);
    let stored = hasher.hash(token.as_parsed());

    assert!(hasher.verify(token.as_parsed(), &stored));
    assert!(!hasher.verify(other.as_parsed(), &stored));
}

#[test]
fn hash_depends_on_the_pepper() {
    let token = PlainToken::generate(TokenKind::IncidentGrant, TokenEnv::Test);
    let stored = hasher(&[1; 32]).hash(token.as_parsed());
    assert!(!hasher(&[2; 32]).verify(token.as_parsed(), &stored));
    assert_ne!(stored, hasher(&[2; 32]).hash(token.as_parsed()));
}

#[test]
fn hash_is_hmac_sha256_of_the_full_token() {
    let token = PlainToken::generate(TokenKind::ApiKey, TokenEnv::Dev);
    let pepper = [9_u8; 40];
    let expected = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &pepper),
        token.expose_secret().as_bytes(),
    );
    assert_eq!(
        hasher(&pepper).hash(token.as_parsed()).as_bytes(),
        expected.as_ref()
    );
}

#[test]
fn short_peppers_are_refused() {
    let short = SecretSlice::from(vec![0_u8; MIN_PEPPER_LEN - 1]);
    assert_eq!(
        KeyHasher::new(&short).unwrap_err(),
        PepperTooShort(MIN_PEPPER_LEN - 1)
    );
    assert!(KeyHasher::new(&SecretSlice::from(Vec::new())).is_err());
}

#[test]
fn hash_hex_round_trips() {
    let token = PlainToken::generate(TokenKind::ApiKey, TokenEnv::Live);
    let hash = hasher(&[3; 32]).hash(token.as_parsed());
    let hex = hash.to_hex();
    assert_eq!(hex.len(), 64);
    assert_eq!(TokenHash::from_hex(&hex).unwrap(), hash);
    assert_eq!(TokenHash::from_hex(&hex.to_uppercase()).unwrap(), hash);
    assert_eq!(TokenHash::from_hex(&hex[..62]), Err(InvalidTokenHash));
    assert_eq!(
        TokenHash::from_hex(&format!("{}zz", &hex[..62])),
        Err(InvalidTokenHash)
    );
}

#[test]
fn debug_and_display_print_only_a_short_prefix() {
    let token = PlainToken::generate(TokenKind::ApiKey, TokenEnv::Live);
    let secret = token.expose_secret();
    let parsed = PlainToken::parse(secret).unwrap();
    // `pk_live_` plus 4 of the 34 random characters.
    let preview = &secret[..12];

    assert_eq!(format!("{token:?}"), format!("PlainToken({preview}…)"));
    assert_eq!(format!("{token}"), format!("{preview}…"));
    assert_eq!(format!("{parsed:?}"), format!("ParsedToken({preview}…)"));
    assert_eq!(format!("{parsed}"), format!("{preview}…"));
    assert_eq!(format!("{:?}", hasher(&[5; 32])), "KeyHasher([REDACTED])");
    let hash = hasher(&[5; 32]).hash(&parsed);
    assert!(!format!("{hash:?}").contains(&hash.to_hex()));
}

proptest! {
    #[test]
    fn parse_never_panics(s in any::<String>()) {
        let _ = PlainToken::parse(&s);
        let _ = looks_like_token(&s);
    }

    #[test]
    fn parse_never_panics_on_token_shaped_input(
        product in "p[kg]|..",
        env in "live|test|dev|[a-z]{3,4}",
        body in "[0-9A-Za-z_é]{34,38}",
    ) {
        let s = format!("{product}_{env}_{body}");
        if let Ok(parsed) = PlainToken::parse(&s) {
            prop_assert_eq!(parsed.expose_secret(), s.as_str());
        }
    }

    #[test]
    fn random_bodies_round_trip_with_their_checksum(random in "[0-9A-Za-z]{34}") {
        let s = with_valid_checksum(&format!("pg_test_{random}"));
        let parsed = PlainToken::parse(&s);
        prop_assert!(parsed.is_ok());
    }
}
