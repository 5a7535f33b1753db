//! The codec of authd's services: prost's, with a cheaper encoder for small messages.
//!
//! prost writes every tag, length and varint one byte at a time through `BufMut::put_u8`, and on
//! tonic's `EncodeBuf` (a `BytesMut`) each byte is a full `put_slice`: a capacity check, a copy and
//! an advance. For a reply of a few hundred bytes, such as ValidateToken's, those per-byte calls cost
//! more than the copy of the whole message (callgrind, issue J's P1). [`AuthdCodec`] therefore
//! encodes a message of up to [`SMALL_MESSAGE`] bytes into a buffer on the stack, where `put_u8` is
//! a bounds check and a store, and hands it to tonic with one `put_slice`; a larger message is
//! encoded straight into tonic's buffer, as `tonic_prost::ProstCodec` does. The bytes on the wire
//! are the same either way (a unit test compares them). Decoding is `tonic_prost`'s, unchanged.
//!
//! The generated services and clients name this codec (`codec_path` in `tests/bootstrap.rs`).

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::BufMut;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::{ProstCodec, ProstDecoder};

/// Messages up to this many encoded bytes go through the stack buffer.
pub const SMALL_MESSAGE: usize = 512;

/// `application/grpc+proto` with prost, as `tonic_prost::ProstCodec`, with [`SmallFirstEncoder`].
#[derive(Debug, Clone)]
pub struct AuthdCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for AuthdCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for AuthdCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SmallFirstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SmallFirstEncoder { _pd: PhantomData }
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
    }
}

/// Encodes a small message on the stack first (see the module docs).
#[derive(Debug, Clone)]
pub struct SmallFirstEncoder<T> {
    _pd: PhantomData<T>,
}

impl<T: Message> Encoder for SmallFirstEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, buf: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        encode_small_first(&item, buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Writes `item` into `buf`: through a stack buffer when it is small, straight otherwise.
fn encode_small_first<T: Message>(item: &T, buf: &mut impl BufMut) -> Result<(), Status> {
    let len = item.encoded_len();
    let result = if len <= SMALL_MESSAGE {
        let mut stack = [0u8; SMALL_MESSAGE];
        let mut rest: &mut [u8] = &mut stack[..len];
        let written = item.encode(&mut rest);
        if written.is_ok() {
            buf.put_slice(&stack[..len]);
        }
        written
    } else {
        item.encode(buf)
    };
    // Only a buffer without room fails, and both have room for `encoded_len` bytes.
    result.map_err(|e| Status::internal(format!("cannot encode the reply: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Role, ValidateTokenResponse};

    fn both_ways<T: Message>(m: &T) -> (Vec<u8>, Vec<u8>) {
        let mut ours = Vec::new();
        encode_small_first(m, &mut ours)
            .map_err(|s| s.to_string())
            .unwrap();
        (ours, m.encode_to_vec())
    }

    #[test]
    fn same_bytes_as_prost_small_and_large() {
        let small = ValidateTokenResponse {
            valid: true,
            user_id: "0195f3a2-7c3e-7d41-a1b2-c3d4e5f60718".into(),
            email: "someone@example.com".into(),
            role: Role::Admin as i32,
            session_id: "0195f3a2-7c3e-7d41-a1b2-c3d4e5f60719".into(),
            expire_time: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 123_456_789,
            }),
            ..Default::default()
        };
        let (ours, prost) = both_ways(&small);
        assert!(ours.len() <= SMALL_MESSAGE);
        assert_eq!(ours, prost);

        let large = ValidateTokenResponse {
            email: "x".repeat(SMALL_MESSAGE * 3),
            ..small
        };
        let (ours, prost) = both_ways(&large);
        assert!(ours.len() > SMALL_MESSAGE);
        assert_eq!(ours, prost);

        // Exactly at the bound, and empty.
        let edge = ValidateTokenResponse {
            email: "y".repeat(SMALL_MESSAGE - 3),
            ..Default::default()
        };
        let (ours, prost) = both_ways(&edge);
        assert_eq!(ours.len(), SMALL_MESSAGE);
        assert_eq!(ours, prost);
        let (ours, prost) = both_ways(&ValidateTokenResponse::default());
        assert!(ours.is_empty());
        assert_eq!(ours, prost);
    }
}
