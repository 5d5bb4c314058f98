//! One direction of an HTTP/2 connection (h2c after an upgrade, or prior knowledge), decoded as
//! far as gRPC needs: frames, header blocks (with their CONTINUATIONs) through a real HPACK
//! decoder (`hpack.rs`: dynamic table, Huffman), and the length-prefixed gRPC messages each
//! stream's DATA carries.
//! The capture keeps at most 4 KiB of each read, and says how many bytes it left out. A gap
//! inside a DATA frame loses only the gRPC message it cuts (its length says where the next one
//! starts); a gap in a header block loses the HPACK state of the whole connection, which ends the
//! decoding, and the caller falls back to scanning.
//!
//! Every size is bounded: the peer writing these bytes may be an attacker.
use std::collections::BTreeMap;

use super::hpack::HpackDecoder;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
/// Larger than any frame a gRPC peer sends (its default maximum is 16 KiB).
const MAX_FRAME: usize = 1 << 20;
/// A header block, CONTINUATIONs included.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// The dynamic table the decoder allows (Go's default is 4 KiB).
const MAX_DYNAMIC_TABLE: usize = 64 * 1024;
/// gRPC messages kept whole; larger ones are skipped (counted, not buffered).
const MAX_MESSAGE: usize = 4 << 20;
/// Streams followed at once.
const MAX_STREAMS: usize = 256;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PUSH_PROMISE: u8 = 5;
const CONTINUATION: u8 = 9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum H2Error {
    #[error("a frame of {0} bytes is over the limit")]
    FrameTooLarge(usize),
    #[error("a header block of over {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    #[error("a frame's padding is longer than the frame")]
    BadPadding,
    #[error("a CONTINUATION frame without its HEADERS, or another frame between them")]
    UnexpectedContinuation,
    #[error("the header block is not valid HPACK")]
    Hpack,
    #[error("bytes are missing from the capture")]
    Gap,
}

/// What the decoded bytes said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H2Event {
    /// A stream's header block (request or response headers, or trailers).
    Headers {
        stream: u32,
        fields: Vec<(String, String)>,
    },
    /// One whole gRPC message of a stream; `path` is the stream's `:path` when its request
    /// headers went this way.
    Message {
        stream: u32,
        path: Option<String>,
        bytes: Vec<u8>,
    },
    /// The captured start of a gRPC message whose rest a gap in the capture cut off (the kernel
    /// keeps 4 KiB of each read): protobuf writes fields in order, so the first ones may be
    /// whole.
    Truncated {
        stream: u32,
        path: Option<String>,
        prefix: Vec<u8>,
    },
}

#[derive(Debug, Default)]
struct Stream {
    path: Option<String>,
    pending: Vec<u8>,
    /// Bytes of an oversized or cut message still to skip.
    skipping: usize,
    /// Bytes went missing where no message length could say what they held.
    lost: bool,
}

/// Where the reader is between frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// At a frame header.
    Header,
    /// Inside a DATA frame's payload: data, then padding.
    Data {
        stream: u32,
        data: usize,
        padding: usize,
        end_stream: bool,
    },
    /// Inside the payload of a frame nothing here reads (SETTINGS, PING, WINDOW_UPDATE...).
    Skip { remaining: usize },
}

pub struct H2Reader {
    buffer: Vec<u8>,
    started: bool,
    position: Position,
    hpack: HpackDecoder,
    /// A HEADERS or PUSH_PROMISE block waiting for its CONTINUATIONs.
    block: Option<(u32, Vec<u8>)>,
    streams: BTreeMap<u32, Stream>,
    failed: Option<H2Error>,
}

impl Default for H2Reader {
    fn default() -> Self {
        Self {
            buffer: Vec::new(),
            started: false,
            position: Position::Header,
            hpack: HpackDecoder::new(MAX_DYNAMIC_TABLE),
            block: None,
            streams: BTreeMap::new(),
            failed: None,
        }
    }
}

impl H2Reader {
    /// Why decoding stopped, if it did.
    pub fn failed(&self) -> Option<&H2Error> {
        self.failed.as_ref()
    }

    /// `len` bytes moved that the capture left out; returns the start of the message they cut,
    /// if there was one.
    pub fn gap(&mut self, len: u64) -> Vec<H2Event> {
        let mut events = Vec::new();
        if len == 0 || self.failed.is_some() {
            return events;
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        match self.position {
            Position::Data {
                stream,
                data,
                padding,
                end_stream,
            } if self.buffer.is_empty() && len <= data + padding => {
                let lost = len.min(data);
                if let Some(state) = self.streams.get_mut(&stream) {
                    if let Some(prefix) = state.lose(lost) {
                        events.push(H2Event::Truncated {
                            stream,
                            path: state.path.clone(),
                            prefix,
                        });
                    }
                }
                self.position = Position::Data {
                    stream,
                    data: data - lost,
                    padding: padding - (len - lost),
                    end_stream,
                };
                self.finish_data();
            }
            Position::Skip { remaining } if self.buffer.is_empty() && len <= remaining => {
                self.position = Position::Skip {
                    remaining: remaining - len,
                };
                if remaining == len {
                    self.position = Position::Header;
                }
            }
            _ => self.fail(H2Error::Gap),
        }
        events
    }

    fn fail(&mut self, error: H2Error) {
        if self.failed.is_none() {
            self.failed = Some(error);
        }
        self.buffer = Vec::new();
        self.streams.clear();
        self.block = None;
    }

    /// Decodes the next bytes of the direction.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<H2Event> {
        let mut events = Vec::new();
        if self.failed.is_some() {
            return events;
        }
        self.buffer.extend_from_slice(bytes);
        if !self.started {
            let common = self.buffer.len().min(PREFACE.len());
            if self.buffer[..common] == PREFACE[..common] {
                if self.buffer.len() < PREFACE.len() {
                    return events;
                }
                self.buffer.drain(..PREFACE.len());
            }
            self.started = true;
        }
        let mut offset = 0;
        loop {
            match self.position {
                Position::Data {
                    stream,
                    data,
                    padding,
                    end_stream,
                } => {
                    let available = self.buffer.len() - offset;
                    let take = data.min(available);
                    if take > 0 {
                        let chunk = self.buffer[offset..offset + take].to_vec();
                        self.data(stream, &chunk, &mut events);
                        offset += take;
                    }
                    let skip = padding.min(self.buffer.len() - offset);
                    offset += skip;
                    self.position = Position::Data {
                        stream,
                        data: data - take,
                        padding: padding - skip,
                        end_stream,
                    };
                    if !self.finish_data() {
                        break;
                    }
                }
                Position::Skip { remaining } => {
                    let skip = remaining.min(self.buffer.len() - offset);
                    offset += skip;
                    if skip < remaining {
                        self.position = Position::Skip {
                            remaining: remaining - skip,
                        };
                        break;
                    }
                    self.position = Position::Header;
                }
                Position::Header => {
                    if self.buffer.len() - offset < FRAME_HEADER {
                        break;
                    }
                    let header = &self.buffer[offset..offset + FRAME_HEADER];
                    let length =
                        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
                    let (kind, flags) = (header[3], header[4]);
                    let stream =
                        u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
                    if length > MAX_FRAME {
                        self.fail(H2Error::FrameTooLarge(length));
                        return events;
                    }
                    if self.block.is_some() && kind != CONTINUATION {
                        self.fail(H2Error::UnexpectedContinuation);
                        return events;
                    }
                    match kind {
                        DATA => {
                            let padded = flags & FLAG_PADDED != 0;
                            let prefix = FRAME_HEADER + usize::from(padded);
                            if self.buffer.len() - offset < prefix {
                                break;
                            }
                            let pad = if padded {
                                usize::from(self.buffer[offset + FRAME_HEADER])
                            } else {
                                0
                            };
                            let Some(data) = length.checked_sub(usize::from(padded) + pad) else {
                                self.fail(H2Error::BadPadding);
                                return events;
                            };
                            offset += prefix;
                            self.position = Position::Data {
                                stream,
                                data,
                                padding: pad,
                                end_stream: flags & FLAG_END_STREAM != 0,
                            };
                        }
                        HEADERS | PUSH_PROMISE | CONTINUATION => {
                            if self.buffer.len() - offset < FRAME_HEADER + length {
                                break;
                            }
                            let payload =
                                self.buffer[offset + FRAME_HEADER..offset + FRAME_HEADER + length].to_vec();
                            offset += FRAME_HEADER + length;
                            if let Err(error) = self.frame(kind, flags, stream, &payload, &mut events) {
                                self.fail(error);
                                return events;
                            }
                        }
                        // SETTINGS, PING, WINDOW_UPDATE, RST_STREAM, GOAWAY, PRIORITY: nothing
                        // gRPC needs here.
                        _ => {
                            offset += FRAME_HEADER;
                            self.position = Position::Skip { remaining: length };
                        }
                    }
                }
            }
        }
        self.buffer.drain(..offset);
        events
    }

    /// Leaves a DATA frame whose payload is all read; false while it is not.
    fn finish_data(&mut self) -> bool {
        let Position::Data {
            stream,
            data: 0,
            padding: 0,
            end_stream,
        } = self.position
        else {
            return false;
        };
        if end_stream {
            self.streams.remove(&stream);
        }
        self.position = Position::Header;
        true
    }

    fn frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        events: &mut Vec<H2Event>,
    ) -> Result<(), H2Error> {
        match kind {
            HEADERS | PUSH_PROMISE => {
                let mut fragment = unpadded(flags, payload)?;
                if kind == HEADERS && flags & FLAG_PRIORITY != 0 {
                    fragment = fragment.get(5..).ok_or(H2Error::BadPadding)?;
                }
                if kind == PUSH_PROMISE {
                    fragment = fragment.get(4..).ok_or(H2Error::BadPadding)?;
                }
                self.block = Some((stream, fragment.to_vec()));
                if flags & FLAG_END_HEADERS != 0 {
                    self.end_block(events)?;
                }
            }
            CONTINUATION => {
                let Some((expected, block)) = &mut self.block else {
                    return Err(H2Error::UnexpectedContinuation);
                };
                if *expected != stream {
                    return Err(H2Error::UnexpectedContinuation);
                }
                if block.len() + payload.len() > MAX_HEADER_BLOCK {
                    return Err(H2Error::HeaderBlockTooLarge);
                }
                block.extend_from_slice(payload);
                if flags & FLAG_END_HEADERS != 0 {
                    self.end_block(events)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn end_block(&mut self, events: &mut Vec<H2Event>) -> Result<(), H2Error> {
        let Some((stream, block)) = self.block.take() else {
            return Ok(());
        };
        let decoded = self.hpack.decode(&block).map_err(|_| H2Error::Hpack)?;
        let fields: Vec<(String, String)> = decoded
            .into_iter()
            .map(|(name, value)| {
                (
                    String::from_utf8_lossy(&name).into_owned(),
                    String::from_utf8_lossy(&value).into_owned(),
                )
            })
            .collect();
        if let Some((_, path)) = fields.iter().find(|(name, _)| name == ":path") {
            if let Some(state) = self.stream(stream) {
                state.path = Some(path.clone());
            }
        }
        events.push(H2Event::Headers { stream, fields });
        Ok(())
    }

    fn stream(&mut self, id: u32) -> Option<&mut Stream> {
        if !self.streams.contains_key(&id) && self.streams.len() >= MAX_STREAMS {
            return None;
        }
        Some(self.streams.entry(id).or_default())
    }

    /// Cuts a stream's DATA into gRPC messages (1-byte compressed flag, 4-byte length).
    fn data(&mut self, id: u32, mut data: &[u8], events: &mut Vec<H2Event>) {
        let Some(stream) = self.stream(id) else {
            return;
        };
        if stream.lost {
            return;
        }
        if stream.skipping > 0 {
            let skipped = stream.skipping.min(data.len());
            stream.skipping -= skipped;
            data = &data[skipped..];
        }
        stream.pending.extend_from_slice(data);
        loop {
            if stream.pending.len() < 5 {
                return;
            }
            let compressed = stream.pending[0] != 0;
            let length = u32::from_be_bytes([
                stream.pending[1],
                stream.pending[2],
                stream.pending[3],
                stream.pending[4],
            ]) as usize;
            if length > MAX_MESSAGE {
                let available = stream.pending.len() - 5;
                stream.skipping = length - available.min(length);
                let consumed = 5 + available.min(length);
                stream.pending.drain(..consumed);
                continue;
            }
            if stream.pending.len() < 5 + length {
                return;
            }
            let message: Vec<u8> = stream.pending.drain(..5 + length).skip(5).collect();
            // A compressed message (gzip) is not decoded; BuildKit's are not compressed.
            if !compressed {
                events.push(H2Event::Message {
                    stream: id,
                    path: stream.path.clone(),
                    bytes: message,
                });
            }
        }
    }
}

impl Stream {
    /// `len` bytes of the stream's DATA went missing: the message they cut is dropped (its
    /// captured start is returned, when there is one), and the next one starts where its length
    /// says; without a length the stream is lost.
    fn lose(&mut self, len: usize) -> Option<Vec<u8>> {
        if len == 0 || self.lost {
            return None;
        }
        if self.skipping > 0 && self.pending.is_empty() {
            if len <= self.skipping {
                self.skipping -= len;
            } else {
                self.lost = true;
            }
            return None;
        }
        if self.pending.len() < 5 {
            self.lost = true;
            return None;
        }
        let length =
            u32::from_be_bytes([self.pending[1], self.pending[2], self.pending[3], self.pending[4]]) as usize;
        let missing = (5 + length).saturating_sub(self.pending.len());
        let compressed = self.pending[0] != 0;
        let prefix = std::mem::take(&mut self.pending).split_off(5);
        if len <= missing {
            self.skipping = missing - len;
        } else {
            self.lost = true;
        }
        (!compressed && !prefix.is_empty()).then_some(prefix)
    }
}

fn unpadded(flags: u8, payload: &[u8]) -> Result<&[u8], H2Error> {
    if flags & FLAG_PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload.split_first().ok_or(H2Error::BadPadding)?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|end| &rest[..end])
        .ok_or(H2Error::BadPadding)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub fn grpc(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    /// A header block as an encoder with a dynamic table writes it.
    pub fn header_block(encoder: &mut httlib_hpack::Encoder<'static>, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in fields {
            let flags = httlib_hpack::Encoder::HUFFMAN_VALUE
                | httlib_hpack::Encoder::WITH_INDEXING
                | httlib_hpack::Encoder::BEST_FORMAT;
            encoder
                .encode(
                    (name.as_bytes().to_vec(), value.as_bytes().to_vec(), flags),
                    &mut block,
                )
                .unwrap();
        }
        block
    }

    #[test]
    fn requests_split_anywhere_give_paths_and_messages() {
        let mut encoder = httlib_hpack::Encoder::default();
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(4, 0, 0, &[]));
        let first = header_block(
            &mut encoder,
            &[(":method", "POST"), (":path", "/moby.buildkit.v1.Control/Solve")],
        );
        // The block split over HEADERS and a CONTINUATION, padded and with a priority.
        let (a, b) = first.split_at(first.len() / 2);
        let mut headers = vec![3, 0, 0, 0, 0, 16];
        headers.extend_from_slice(a);
        headers.extend_from_slice(&[0, 0, 0]);
        wire.extend(frame(HEADERS, FLAG_PADDED | FLAG_PRIORITY, 1, &headers));
        wire.extend(frame(CONTINUATION, FLAG_END_HEADERS, 1, b));
        let message = grpc(b"solve-request");
        wire.extend(frame(DATA, 0, 1, &message[..3]));
        wire.extend(frame(DATA, FLAG_END_STREAM, 1, &message[3..]));
        // The same path again: now an index into the dynamic table.
        let second = header_block(
            &mut encoder,
            &[(":method", "POST"), (":path", "/moby.buildkit.v1.Control/Solve")],
        );
        assert!(second.len() < first.len(), "the dynamic table is used");
        wire.extend(frame(HEADERS, FLAG_END_HEADERS, 3, &second));
        wire.extend(frame(DATA, FLAG_END_STREAM, 3, &grpc(b"again")));
        for cut in [1, 7, 30, wire.len() - 1] {
            let mut reader = H2Reader::default();
            let mut events = reader.feed(&wire[..cut]);
            events.extend(reader.feed(&wire[cut..]));
            let messages: Vec<(Option<String>, Vec<u8>)> = events
                .iter()
                .filter_map(|e| match e {
                    H2Event::Message { path, bytes, .. } => Some((path.clone(), bytes.clone())),
                    H2Event::Headers { .. } | H2Event::Truncated { .. } => None,
                })
                .collect();
            let path = Some("/moby.buildkit.v1.Control/Solve".to_string());
            assert_eq!(
                messages,
                [
                    (path.clone(), b"solve-request".to_vec()),
                    (path, b"again".to_vec())
                ],
                "cut at {cut}"
            );
            assert!(reader.failed().is_none());
        }
    }

    #[test]
    fn a_gap_inside_data_loses_only_the_message_it_cuts() {
        let big = vec![b'x'; 6000];
        let mut payload = grpc(&big);
        payload.extend(grpc(b"next"));
        let wire = frame(DATA, 0, 1, &payload);
        let mut reader = H2Reader::default();
        // A 4 KiB capture of the read, then the count of what was left out.
        assert!(reader.feed(&wire[..4096]).is_empty());
        reader.gap((wire.len() - 4096 - grpc(b"next").len()) as u64);
        let events = reader.feed(&grpc(b"next"));
        assert!(reader.failed().is_none());
        assert_eq!(
            events,
            [H2Event::Message {
                stream: 1,
                path: None,
                bytes: b"next".to_vec()
            }]
        );
        // A gap in a header block ends everything.
        let mut reader = H2Reader::default();
        reader.feed(&frame(HEADERS, FLAG_END_HEADERS, 3, &[0x82, 0x84])[..10]);
        reader.gap(1);
        assert_eq!(reader.failed(), Some(&H2Error::Gap));
    }

    #[test]
    fn hostile_frames_stop_the_decoding_cleanly() {
        let mut reader = H2Reader::default();
        assert!(reader
            .feed(&frame(
                HEADERS,
                FLAG_END_HEADERS,
                1,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
            ))
            .is_empty());
        assert_eq!(reader.failed(), Some(&H2Error::Hpack));
        let mut reader = H2Reader::default();
        reader.feed(&frame(CONTINUATION, FLAG_END_HEADERS, 1, b"x"));
        assert_eq!(reader.failed(), Some(&H2Error::UnexpectedContinuation));
        let mut reader = H2Reader::default();
        reader.feed(&frame(DATA, FLAG_PADDED, 1, &[9, 1]));
        assert_eq!(reader.failed(), Some(&H2Error::BadPadding));
        let mut reader = H2Reader::default();
        reader.feed(&[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1]);
        assert!(matches!(reader.failed(), Some(H2Error::FrameTooLarge(_))));
        // An announced 4 GiB message is skipped without being buffered.
        let mut reader = H2Reader::default();
        let mut huge = vec![0, 0xff, 0xff, 0xff, 0xff];
        huge.extend_from_slice(&[7; 100]);
        assert!(reader.feed(&frame(DATA, 0, 1, &huge)).is_empty());
        assert!(reader.failed().is_none());
        assert!(reader.streams[&1].pending.is_empty());
        reader.gap(1);
        assert_eq!(reader.failed(), Some(&H2Error::Gap), "a gap at a frame header");
    }
}
