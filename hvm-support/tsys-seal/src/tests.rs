use sha2::{Digest as _, Sha256};

use super::*;

const KEY: [u8; KEY_LEN] = [0x42; KEY_LEN];

fn plain(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + 3) % 251) as u8).collect()
}

fn seal(file_id: u64, data: &[u8]) -> Vec<u8> {
    seal_file(&KEY, file_id, data).unwrap()
}

#[test]
fn rfc8439_section_2_8_2_vector() {
    let key: [u8; KEY_LEN] = std::array::from_fn(|i| 0x80 + i as u8);
    let nonce: [u8; NONCE_LEN] = hex::decode("070000004041424344454647")
        .unwrap()
        .try_into()
        .unwrap();
    let aad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
    let mut buf = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
    let plain = buf.clone();
    let tag = aead_seal(&key, &nonce, &aad, &mut buf);
    assert_eq!(
        hex::encode(&buf),
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116"
    );
    assert_eq!(hex::encode(tag), "1ae10b594f09e26a7e902ecbd0600691");
    assert!(aead_open(&key, &nonce, &aad, &mut buf, &tag));
    assert_eq!(buf, plain);
}

/// The layout, byte for byte, against an independent implementation of
/// the specification (python's `cryptography`, ChaCha20Poly1305): key
/// 00..1f, block i's nonce twelve bytes of i, 4196 bytes of (i*7+3)%251.
#[test]
fn layout_matches_an_independent_implementation() {
    let key: [u8; KEY_LEN] = std::array::from_fn(|i| i as u8);
    let data = plain(4096 + 100);
    let sealed = seal_file_with(&key, 0x1122_3344_5566_7788, &data, |i| {
        Ok([i as u8; NONCE_LEN])
    })
    .unwrap();
    assert_eq!(sealed.len(), 8288);
    assert_eq!(
        hex::encode(Sha256::digest(&sealed)),
        "6aac8a303c5b61f946ac34f45bc89d710ac8a4b588ce2954a917b07686123e2d"
    );
    assert_eq!(&sealed[0..4], b"CTS1");
    assert_eq!(&sealed[4..8], &4096u32.to_le_bytes());
    assert_eq!(
        &sealed[STORED_LEN + 4..STORED_LEN + 8],
        &100u32.to_le_bytes()
    );
    assert_eq!(&sealed[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(&sealed[28..32], &[0; 4]);
}

#[test]
fn round_trips_every_shape() {
    for len in [0, 1, 100, 4095, 4096, 4097, 8192, 3 * 4096 + 17] {
        let data = plain(len);
        let sealed = seal(7, &data);
        assert_eq!(sealed.len() as u64, sealed_len(len as u64), "len {len}");
        assert_eq!(*open_file(&KEY, 7, &sealed).unwrap(), data, "len {len}");
        assert_eq!(
            *open_file_exact(&KEY, 7, &sealed, len as u64).unwrap(),
            data
        );
    }
    assert!(seal(7, &[]).is_empty(), "an empty file has no blocks");
}

#[test]
fn nonces_are_fresh_and_ciphertext_hides_the_plaintext() {
    let data = vec![b'A'; 4096];
    let a = seal(1, &data);
    let b = seal(1, &data);
    assert_ne!(a[16..28], b[16..28]);
    assert_ne!(a[32..], b[32..]);
    assert!(!a.windows(16).any(|w| w == [b'A'; 16]));
}

#[test]
fn seal_block_refuses_bad_lengths() {
    let nonce = [0; NONCE_LEN];
    assert!(matches!(
        seal_block(&KEY, 1, 0, &nonce, &[]),
        Err(SealError::BlockLen(0))
    ));
    assert!(matches!(
        seal_block(&KEY, 1, 0, &nonce, &[0; 4097]),
        Err(SealError::BlockLen(4097))
    ));
}

#[test]
fn every_single_bit_flip_in_a_block_is_refused() {
    let sealed = seal(9, &plain(300));
    for byte in 0..STORED_LEN {
        for bit in [0, 3, 7] {
            let mut bad = sealed.clone();
            bad[byte] ^= 1 << bit;
            let err = open_file(&KEY, 9, &bad).unwrap_err();
            let expected_kind = match byte {
                0..4 => matches!(err, OpenError::Magic { block: 0 }),
                4..8 => matches!(
                    err,
                    OpenError::Len { block: 0, .. } | OpenError::Tag { block: 0 }
                ),
                8..16 => matches!(err, OpenError::FileId { block: 0, .. }),
                28..32 => matches!(err, OpenError::Reserved { block: 0 }),
                _ => matches!(err, OpenError::Tag { block: 0 }),
            };
            assert!(expected_kind, "byte {byte} bit {bit}: {err}");
        }
    }
}

#[test]
fn wrong_key_is_refused() {
    let sealed = seal(9, &plain(5000));
    assert_eq!(
        open_file(&[0x43; KEY_LEN], 9, &sealed).unwrap_err(),
        OpenError::Tag { block: 0 }
    );
}

#[test]
fn reordered_blocks_are_refused() {
    let sealed = seal(3, &plain(3 * 4096));
    let mut swapped = sealed.clone();
    swapped[..STORED_LEN].copy_from_slice(&sealed[STORED_LEN..2 * STORED_LEN]);
    swapped[STORED_LEN..2 * STORED_LEN].copy_from_slice(&sealed[..STORED_LEN]);
    assert_eq!(
        open_file(&KEY, 3, &swapped).unwrap_err(),
        OpenError::Tag { block: 0 }
    );
    // One block replayed at another position of the same file.
    let mut dup = sealed.clone();
    dup[2 * STORED_LEN..].copy_from_slice(&sealed[..STORED_LEN]);
    assert_eq!(
        open_file(&KEY, 3, &dup).unwrap_err(),
        OpenError::Tag { block: 2 }
    );
}

#[test]
fn blocks_replayed_from_another_file_are_refused() {
    let a = seal(1, &plain(2 * 4096));
    let b = seal(2, &plain(2 * 4096));
    let mut mixed = a.clone();
    mixed[STORED_LEN..].copy_from_slice(&b[STORED_LEN..]);
    assert_eq!(
        open_file(&KEY, 1, &mixed).unwrap_err(),
        OpenError::FileId {
            block: 1,
            expected: 1,
            found: 2
        }
    );
    // Relabelled with the right file_id: the header is authenticated.
    mixed[STORED_LEN + 8..STORED_LEN + 16].copy_from_slice(&1u64.to_le_bytes());
    assert_eq!(
        open_file(&KEY, 1, &mixed).unwrap_err(),
        OpenError::Tag { block: 1 }
    );
    // The whole of another file, opened as file 1.
    assert!(matches!(
        open_file(&KEY, 1, &b).unwrap_err(),
        OpenError::FileId { block: 0, .. }
    ));
}

#[test]
fn truncation_is_refused() {
    let data = plain(2 * 4096 + 10);
    let sealed = seal(5, &data);
    for cut in [1, 16, STORED_LEN - 1, STORED_LEN + 5] {
        assert!(matches!(
            open_file(&KEY, 5, &sealed[..sealed.len() - cut]).unwrap_err(),
            OpenError::Truncated { .. }
        ));
    }
    // The short last block cut off: the remaining blocks are full, so only
    // the known length tells.
    let cut = &sealed[..2 * STORED_LEN];
    assert_eq!(open_file(&KEY, 5, cut).unwrap().len(), 2 * 4096);
    assert_eq!(
        open_file_exact(&KEY, 5, cut, data.len() as u64).unwrap_err(),
        OpenError::LengthMismatch {
            expected: data.len() as u64,
            found: 2 * 4096
        }
    );
}

#[test]
fn a_short_block_must_be_last() {
    // Two files' short blocks cannot be spliced, but the key holder's own
    // short block in the middle is refused as well.
    let nonce = [1; NONCE_LEN];
    let mut file = seal_block(&KEY, 4, 0, &nonce, &plain(10)).unwrap();
    file.extend(seal_block(&KEY, 4, 1, &[2; NONCE_LEN], &plain(4096)).unwrap());
    assert_eq!(
        open_file(&KEY, 4, &file).unwrap_err(),
        OpenError::ShortNotLast { block: 0, len: 10 }
    );
}

#[test]
fn a_length_field_out_of_range_is_named() {
    let mut sealed = seal(6, &plain(50));
    for len in [0u32, 4097, u32::MAX] {
        sealed[4..8].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            open_file(&KEY, 6, &sealed).unwrap_err(),
            OpenError::Len { block: 0, len }
        );
    }
}

#[test]
fn errors_are_distinct_messages() {
    let msgs = [
        OpenError::Truncated { len: 1 },
        OpenError::Magic { block: 0 },
        OpenError::Reserved { block: 0 },
        OpenError::Len { block: 0, len: 0 },
        OpenError::FileId {
            block: 0,
            expected: 1,
            found: 2,
        },
        OpenError::Tag { block: 0 },
        OpenError::ShortNotLast { block: 0, len: 1 },
        OpenError::Padding { block: 0 },
        OpenError::LengthMismatch {
            expected: 1,
            found: 0,
        },
    ]
    .map(|e| e.to_string());
    let unique: std::collections::BTreeSet<_> = msgs.iter().collect();
    assert_eq!(unique.len(), msgs.len());
}
