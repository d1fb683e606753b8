//! Feeds arbitrary bytes to the agent protocol's frame decoder, as a peer would.
//!
//! Properties: decoding never panics, never reports consuming more than it was given, and
//! every decoded message survives an encode/decode round trip unchanged.
#![no_main]

use flick_proto::{Message, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match decode_frame(rest) {
            Ok(Some((msg, used))) => {
                assert!(used > 0 && used <= rest.len());
                let again = msg.encode();
                let (back, n) = decode_frame(&again)
                    .expect("re-encoded frame decodes")
                    .expect("re-encoded frame is complete");
                assert_eq!(n, again.len());
                assert_eq!(back, msg);
                rest = &rest[used..];
            }
            Ok(None) | Err(_) => break,
        }
    }
    // Payload decoding of every kind, independent of the header.
    for kind in 0..=255u8 {
        if let Some(kind) = flick_proto::Kind::from_u8(kind) {
            let _ = Message::decode(kind, data);
        }
    }
});
