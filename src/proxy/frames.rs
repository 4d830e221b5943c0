//! Where the frames of a WebSocket byte stream begin and end (RFC 6455 §5.2), so the tunnel
//! can put a Close frame of its own between two frames. Only the 2 to 14 bytes of each head
//! are looked at; payloads are counted, never kept. Control frames may come between the
//! fragments of a message, so a Close may go between any two frames.

/// The opcode of a Close frame.
const OP_CLOSE: u8 = 0x8;
/// Two bytes, up to eight of extended length, four of masking key.
const MAX_HEAD: usize = 14;
/// A control frame's payload (RFC 6455 §5.5): the close code's two bytes and the reason.
const MAX_CLOSE_REASON: usize = 123;

/// One frame's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub fin: bool,
    pub opcode: u8,
    pub masked: bool,
    pub len: u64,
}

/// Where a byte stream is, frame-wise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameTracker {
    state: State,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading a head; `have` of its bytes so far (0: between two frames).
    Head { bytes: [u8; MAX_HEAD], have: usize },
    /// Inside a payload, `left` bytes of it to come.
    Payload { head: Head, left: u64 },
    /// Not framing as RFC 6455 has it (a 64-bit length with its top bit set): the ends of
    /// frames are unknown from here on. The endpoints will fail the connection themselves.
    Lost,
}

/// What some bytes held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Frames that ended in them.
    pub frames: usize,
    /// A Close frame ended in them.
    pub close: bool,
}

enum Parsed {
    NeedMore,
    Head(Head),
    Invalid,
}

fn parse_head(bytes: &[u8]) -> Parsed {
    let [b0, b1, rest @ ..] = bytes else { return Parsed::NeedMore };
    let masked = b1 & 0x80 != 0;
    let (extended, mask) = (
        match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        },
        if masked { 4 } else { 0 },
    );
    if rest.len() < extended + mask {
        return Parsed::NeedMore;
    }
    let len = match extended {
        0 => u64::from(b1 & 0x7f),
        n => rest[..n].iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
    };
    if len >> 63 != 0 {
        return Parsed::Invalid;
    }
    Parsed::Head(Head { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, masked, len })
}

const BETWEEN_FRAMES: State = State::Head { bytes: [0; MAX_HEAD], have: 0 };

impl Default for FrameTracker {
    fn default() -> Self {
        FrameTracker::new()
    }
}

impl FrameTracker {
    /// At the start of a stream: between two frames.
    pub fn new() -> FrameTracker {
        FrameTracker { state: BETWEEN_FRAMES }
    }

    /// Between two frames: a frame of our own may go here.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Head { have: 0, .. })
    }

    pub fn is_lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Takes `bytes` as the next of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Fed {
        let mut fed = Fed::default();
        while !bytes.is_empty() {
            let (used, ended) = self.step(bytes);
            bytes = &bytes[used..];
            if let Some(head) = ended {
                fed.frames += 1;
                fed.close |= head.opcode == OP_CLOSE;
            }
        }
        fed
    }

    /// How many of `bytes` (the next of the stream) finish the frame under way: 0 between
    /// frames; `None` when it does not end within them, or the stream is lost.
    pub fn boundary_within(&self, bytes: &[u8]) -> Option<usize> {
        if self.at_boundary() {
            return Some(0);
        }
        let mut ahead = self.clone();
        let mut offset = 0;
        while offset < bytes.len() && !ahead.is_lost() {
            let (used, ended) = ahead.step(&bytes[offset..]);
            offset += used;
            if ended.is_some() {
                return Some(offset);
            }
        }
        None
    }

    /// Consumes `bytes` up to the end of the frame under way, or all of them; says how many it
    /// took (at least one) and the head of the frame that ended there, if one did.
    fn step(&mut self, bytes: &[u8]) -> (usize, Option<Head>) {
        match &mut self.state {
            State::Lost => (bytes.len(), None),
            State::Payload { head, left } => {
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(bytes.len());
                *left -= take as u64;
                if *left > 0 {
                    return (take, None);
                }
                let head = *head;
                self.state = BETWEEN_FRAMES;
                (take, Some(head))
            }
            State::Head { bytes: head_bytes, have } => {
                for (i, byte) in bytes.iter().enumerate() {
                    head_bytes[*have] = *byte;
                    *have += 1;
                    match parse_head(&head_bytes[..*have]) {
                        Parsed::NeedMore => {}
                        Parsed::Invalid => {
                            self.state = State::Lost;
                            return (i + 1, None);
                        }
                        Parsed::Head(head) if head.len == 0 => {
                            self.state = BETWEEN_FRAMES;
                            return (i + 1, Some(head));
                        }
                        Parsed::Head(head) => {
                            self.state = State::Payload { head, left: head.len };
                            return (i + 1, None);
                        }
                    }
                }
                (bytes.len(), None)
            }
        }
    }
}

/// A Close frame: `code` and `reason` (cut to fit a control frame), masked with `mask` when
/// it goes to a server (a client's frames are masked, a server's never are).
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut cut = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    let len = payload.len() as u8;
    let mut frame = vec![0x80 | OP_CLOSE];
    match mask {
        None => {
            frame.push(len);
            frame.extend_from_slice(&payload);
        }
        Some(key) => {
            frame.push(0x80 | len);
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as an endpoint writes it (payload bytes are zero; masking does not change sizes).
    fn frame(fin: bool, opcode: u8, len: usize, mask: bool) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let m = if mask { 0x80 } else { 0 };
        match len {
            0..=125 => out.push(m | len as u8),
            126..=0xffff => {
                out.push(m | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(m | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if mask {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out.extend(std::iter::repeat_n(0u8, len));
        out
    }

    #[test]
    fn a_whole_frame_in_one_piece_ends_at_a_boundary() {
        for mask in [false, true] {
            let mut t = FrameTracker::new();
            assert!(t.at_boundary());
            let fed = t.feed(&frame(true, 0x1, 5, mask));
            assert_eq!(fed, Fed { frames: 1, close: false });
            assert!(t.at_boundary());
        }
    }

    #[test]
    fn heads_split_anywhere_are_read_right_for_every_length_form() {
        // 7-bit, 16-bit and 64-bit lengths, masked (client) and not (server): fed byte by byte.
        for len in [0, 1, 125, 126, 300, 0xffff, 0x1_0000, 70_000] {
            for mask in [false, true] {
                let bytes = frame(true, 0x2, len, mask);
                let head_len = bytes.len() - len;
                let mut t = FrameTracker::new();
                for (i, b) in bytes.iter().enumerate() {
                    assert_eq!(t.at_boundary(), i == 0, "len {len} mask {mask} byte {i}");
                    let fed = t.feed(std::slice::from_ref(b));
                    assert_eq!(fed.frames, usize::from(i == bytes.len() - 1), "len {len} byte {i} (head {head_len})");
                }
                assert!(t.at_boundary());
            }
        }
    }

    #[test]
    fn every_split_point_of_a_stream_finds_the_same_frames() {
        let stream = [frame(true, 0x1, 3, true), frame(true, 0x9, 0, true), frame(true, 0x2, 200, true)].concat();
        for split in 0..=stream.len() {
            let mut t = FrameTracker::new();
            let a = t.feed(&stream[..split]);
            let b = t.feed(&stream[split..]);
            assert_eq!(a.frames + b.frames, 3, "split at {split}");
            assert!(t.at_boundary());
        }
    }

    #[test]
    fn a_64_bit_length_is_counted_without_keeping_the_payload() {
        let len: u64 = 1 << 40;
        let mut head = vec![0x82, 127];
        head.extend_from_slice(&len.to_be_bytes());
        let mut t = FrameTracker::new();
        t.feed(&head);
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..16 {
            assert_eq!(t.feed(&chunk).frames, 0);
        }
        assert!(!t.at_boundary());
        assert_eq!(t.boundary_within(&chunk), None);
        assert_eq!(
            t.state,
            State::Payload { head: Head { fin: true, opcode: 2, masked: false, len }, left: len - 16 * 65536 }
        );
    }

    #[test]
    fn a_length_with_its_top_bit_set_loses_the_stream() {
        let mut bytes = vec![0x82, 127];
        bytes.extend_from_slice(&(1u64 << 63).to_be_bytes());
        let mut t = FrameTracker::new();
        t.feed(&bytes);
        assert!(t.is_lost() && !t.at_boundary());
        assert_eq!(t.feed(&frame(true, 0x8, 2, false)), Fed::default(), "nothing is read as frames any more");
        assert_eq!(t.boundary_within(&[0; 10]), None);
    }

    #[test]
    fn the_boundary_within_a_chunk_is_where_the_frame_under_way_ends() {
        let first = frame(true, 0x1, 10, true);
        let second = frame(true, 0x1, 4, true);
        let mut t = FrameTracker::new();
        t.feed(&first[..5]);
        let rest = [&first[5..], &second[..]].concat();
        assert_eq!(t.boundary_within(&rest), Some(first.len() - 5));
        assert_eq!(t.boundary_within(&first[5..8]), None, "not within a piece of it");
        let before = t.clone();
        let _ = t.boundary_within(&rest);
        assert_eq!(t, before, "looking ahead changes nothing");
        assert_eq!(FrameTracker::new().boundary_within(&rest), Some(0), "between frames: at once");
        // Mid-head too: the boundary is after the payload the head announces.
        let mut mid_head = FrameTracker::new();
        let long = frame(true, 0x2, 300, false);
        mid_head.feed(&long[..3]);
        assert_eq!(mid_head.boundary_within(&long[3..]), Some(long.len() - 3));
    }

    #[test]
    fn control_frames_between_fragments_are_boundaries() {
        let start = frame(false, 0x1, 4, true);
        let ping = frame(true, 0x9, 2, true);
        let end = frame(true, 0x0, 4, true);
        let mut t = FrameTracker::new();
        assert_eq!(t.feed(&start).frames, 1);
        assert!(t.at_boundary(), "a Close may follow the first fragment");
        assert_eq!(t.feed(&ping).frames, 1);
        assert!(t.at_boundary());
        assert_eq!(t.feed(&end).frames, 1);
    }

    #[test]
    fn zero_length_frames_back_to_back() {
        let stream = [frame(true, 0x9, 0, false), frame(true, 0xA, 0, false), frame(true, 0x1, 0, false)].concat();
        let mut t = FrameTracker::new();
        assert_eq!(t.feed(&stream).frames, 3);
        assert!(t.at_boundary());
    }

    #[test]
    fn close_frames_are_noticed_even_split() {
        let close = close_frame(1000, "bye", Some([9, 8, 7, 6]));
        let mut t = FrameTracker::new();
        assert!(!t.feed(&frame(true, 0x1, 3, true)).close);
        assert!(!t.feed(&close[..3]).close);
        assert!(t.feed(&close[3..]).close);
    }

    #[test]
    fn close_frames_are_well_formed_both_ways() {
        let plain = close_frame(4401, "session ended", None);
        assert_eq!(plain[..2], [0x88, 15]);
        assert_eq!(u16::from_be_bytes([plain[2], plain[3]]), 4401);
        assert_eq!(&plain[4..], b"session ended");

        let key = [0x37, 0xfa, 0x21, 0x3d];
        let masked = close_frame(1001, "going away", Some(key));
        assert_eq!(masked[..2], [0x88, 0x80 | 12]);
        assert_eq!(masked[2..6], key);
        let unmasked: Vec<u8> = masked[6..].iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
        assert_eq!(u16::from_be_bytes([unmasked[0], unmasked[1]]), 1001);
        assert_eq!(&unmasked[2..], b"going away");

        let long = close_frame(1000, &"é".repeat(100), None);
        assert!(long.len() - 2 <= 125, "a control frame's payload is at most 125 bytes");
        assert!(std::str::from_utf8(&long[4..]).is_ok(), "the reason is cut at a character boundary");
        for f in [plain, masked, long] {
            let mut t = FrameTracker::new();
            assert_eq!(t.feed(&f), Fed { frames: 1, close: true });
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// A frame as an endpoint writes it, its length in any of the three forms (not always the
    /// shortest: the tracker must not care, and short payloads keep the cases fast).
    fn frame() -> impl Strategy<Value = Vec<u8>> {
        let opcodes = prop::sample::select(vec![0x0u8, 0x1, 0x2, 0x8, 0x9, 0xA]);
        (any::<bool>(), opcodes, 0usize..=400, 0u8..3, any::<bool>()).prop_map(|(fin, opcode, len, form, mask)| {
            let mut out = vec![(u8::from(fin) << 7) | opcode];
            let m = if mask { 0x80 } else { 0 };
            match (len, form) {
                (0..=125, 0) => out.push(m | len as u8),
                (_, 0 | 1) => {
                    out.push(m | 126);
                    out.extend_from_slice(&(len as u16).to_be_bytes());
                }
                _ => {
                    out.push(m | 127);
                    out.extend_from_slice(&(len as u64).to_be_bytes());
                }
            }
            if mask {
                out.extend_from_slice(&[1, 2, 3, 4]);
            }
            out.extend(std::iter::repeat_n(0x5a, len));
            out
        })
    }

    /// A stream: well-formed frames, or any bytes at all, and where it is cut into reads.
    fn stream() -> impl Strategy<Value = (Vec<u8>, Vec<prop::sample::Index>)> {
        let bytes = prop_oneof![
            prop::collection::vec(frame(), 0..6).prop_map(|f| f.concat()),
            prop::collection::vec(any::<u8>(), 0..300),
        ];
        (bytes, prop::collection::vec(any::<prop::sample::Index>(), 0..12))
    }

    /// The offsets after which a frame ends, and what fed byte by byte leaves.
    fn byte_by_byte(bytes: &[u8]) -> (Vec<usize>, Vec<bool>, FrameTracker) {
        let mut t = FrameTracker::new();
        let (mut ends, mut closes) = (Vec::new(), Vec::new());
        for (i, b) in bytes.iter().enumerate() {
            let fed = t.feed(std::slice::from_ref(b));
            if fed.frames > 0 {
                ends.push(i + 1);
                closes.push(fed.close);
            }
        }
        (ends, closes, t)
    }

    proptest! {
        #![proptest_config(crate::prop::config())]

        #[test]
        fn any_split_of_the_stream_gives_the_same_frame_boundaries((bytes, cuts) in stream()) {
            let (ends, closes, whole) = byte_by_byte(&bytes);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            cuts.dedup();
            let mut t = FrameTracker::new();
            for pair in cuts.windows(2) {
                let (from, to) = (pair[0], pair[1]);
                let chunk = &bytes[from..to];
                let expected_next = ends.iter().find(|&&e| e > from && e <= to).map(|e| e - from);
                match t.boundary_within(chunk) {
                    Some(0) => prop_assert!(from == 0 || ends.contains(&from)),
                    found => prop_assert_eq!(found, expected_next, "read {}..{}", from, to),
                }
                let fed = t.feed(chunk);
                let inside: Vec<usize> = ends.iter().copied().filter(|&e| e > from && e <= to).collect();
                prop_assert_eq!(fed.frames, inside.len(), "read {}..{}", from, to);
                let close = ends.iter().zip(&closes).any(|(e, c)| *e > from && *e <= to && *c);
                prop_assert_eq!(fed.close, close);
                prop_assert_eq!(t.at_boundary(), to == 0 || ends.contains(&to), "after {}", to);
            }
            prop_assert_eq!(t, whole);
        }
    }
}
