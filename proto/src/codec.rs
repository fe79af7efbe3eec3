//! The gRPC codec of every service here: prost's, with a smaller first buffer per call. tonic allocates
//! its encode and decode buffers eagerly for each call, 8 KiB each by default, and keeps them for a
//! stream's whole life; an agent's heartbeat stream (one per agent, 100,000 on a leader) carries messages
//! of a few hundred bytes, so those 16 KiB were most of what a stream costs the leader. Buffers grow as
//! a larger message needs (BytesMut: amortised doubling), so large messages only pay a few more
//! reallocations.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// First size of a call's encode and decode buffers.
pub const BUFFER_BYTES: usize = 1024;
/// How many encoded messages of a stream tonic gathers before handing them to the transport (tonic's
/// default).
pub const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost's codec with [`BUFFER_BYTES`] buffers (generated code names it through `codec_path` in build.rs).
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codec::{Decoder, Encoder};

    #[test]
    fn buffers_start_small() {
        let mut c = LeanCodec::<crate::api::HeartbeatRequest, crate::api::HeartbeatResponse>::default();
        // BufferSettings has no getters: its Debug form says what it holds.
        let enc = format!("{:?}", c.encoder().buffer_settings());
        let dec = format!("{:?}", c.decoder().buffer_settings());
        for s in [enc, dec] {
            assert!(s.contains("buffer_size: 1024"), "{s}");
        }
    }
}
