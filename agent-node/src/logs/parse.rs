//! Container log lines as the runtimes write them, and the reassembly of lines they split.
//!
//! Two formats share `/var/log/pods`: the CRI format of containerd and CRI-O
//! (`<RFC3339Nano> <stdout|stderr> <P|F> <content>`) and Docker's json-file format
//! (`{"log":"…\n","stream":"stdout","time":"…"}`). The format is detected per line because a
//! node can switch runtime under a file that keeps its name. Runtimes split long lines (16
//! KiB pieces): CRI marks the pieces `P` and the last `F`; Docker leaves the newline off all
//! but the last. Reassembly is per stream, since stdout and stderr pieces interleave in one
//! file (the runtime writes the two pipes independently).
//!
//! Each record remembers two offsets, which is what lets a restart resume without losing or
//! repeating lines: `end`, where the physical line that completed it ends (records come out
//! in increasing `end`), and `restart`, the earliest offset a reader must start from to
//! rebuild every record not yet emitted (before any piece still waiting for its end).

use serde::Deserialize;

/// Which pipe of the container a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
    /// The line could not be parsed: shipped as it is, stream unknown.
    Unknown,
}

impl Stream {
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Stream::Stdout => Some("stdout"),
            Stream::Stderr => Some("stderr"),
            Stream::Unknown => None,
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "stdout" => Some(Stream::Stdout),
            "stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// One log line ready to ship.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The runtime's timestamp (of the first piece), 0 when unknown.
    pub time_unix_nano: u64,
    pub stream: Stream,
    /// The line without its trailing newline.
    pub body: String,
    /// The line was longer than the cap: this is a piece of it, the rest follows.
    pub truncated: bool,
    /// End offset of the physical line that completed this record.
    pub end: u64,
    /// Where to start reading again so that no record after this one is lost.
    pub restart: u64,
}

/// One physical line, parsed.
#[derive(Debug, PartialEq, Eq)]
struct Piece {
    time_unix_nano: u64,
    stream: Stream,
    /// More pieces follow (CRI `P`, Docker without newline).
    partial: bool,
    content: Vec<u8>,
}

#[derive(Deserialize)]
struct DockerLine {
    log: String,
    #[serde(default)]
    stream: String,
    #[serde(default)]
    time: String,
}

fn time_nanos(text: &str) -> Option<u64> {
    let time = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    u64::try_from(time.timestamp_nanos_opt()?).ok()
}

/// Parses one physical line (without its newline); `None` when it is neither format.
fn parse_piece(line: &[u8]) -> Option<Piece> {
    if line.first() == Some(&b'{')
        && let Ok(docker) = serde_json::from_slice::<DockerLine>(line)
    {
        let stream = Stream::parse(&docker.stream)?;
        let mut content = docker.log.into_bytes();
        let partial = content.last() != Some(&b'\n');
        if !partial {
            content.pop();
        }
        return Some(Piece {
            time_unix_nano: time_nanos(&docker.time).unwrap_or(0),
            stream,
            partial,
            content,
        });
    }
    let mut fields = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(fields.next()?).ok()?;
    let stream = Stream::parse(std::str::from_utf8(fields.next()?).ok()?)?;
    // Tags are `:`-separated for future use; the first says partial or full.
    let tags = fields.next()?;
    let partial = match tags.split(|b| *b == b':').next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    let time_unix_nano = time_nanos(time)?;
    Some(Piece {
        time_unix_nano,
        stream,
        partial,
        content: fields.next().unwrap_or_default().to_vec(),
    })
}

/// Pieces of one stream waiting for their last piece.
#[derive(Debug)]
struct Pending {
    time_unix_nano: u64,
    content: Vec<u8>,
    /// Where the first piece starts.
    start: u64,
    /// Where the last piece taken ends.
    end: u64,
}

/// Reassembles a file's lines into records; one per file.
#[derive(Debug)]
pub struct Assembler {
    max_line_bytes: usize,
    stdout: Option<Pending>,
    stderr: Option<Pending>,
}

impl Assembler {
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            max_line_bytes: max_line_bytes.max(1),
            stdout: None,
            stderr: None,
        }
    }

    /// Forgets pieces waiting (the file was truncated).
    pub fn reset(&mut self) {
        self.stdout = None;
        self.stderr = None;
    }

    /// Bytes held in pieces waiting for their end.
    #[cfg(test)]
    pub fn pending_bytes(&self) -> usize {
        [&self.stdout, &self.stderr]
            .into_iter()
            .flatten()
            .map(|p| p.content.len())
            .sum()
    }

    /// The earliest start of a piece still waiting, if any.
    fn pending_start(&self) -> Option<u64> {
        [&self.stdout, &self.stderr]
            .into_iter()
            .flatten()
            .map(|p| p.start)
            .min()
    }

    fn restart_after(&self, end: u64) -> u64 {
        self.pending_start().map_or(end, |start| start.min(end))
    }

    fn slot(&mut self, stream: Stream) -> &mut Option<Pending> {
        match stream {
            Stream::Stderr => &mut self.stderr,
            _ => &mut self.stdout,
        }
    }

    fn emit(&self, pending: Pending, stream: Stream, truncated: bool) -> Record {
        Record {
            time_unix_nano: pending.time_unix_nano,
            stream,
            body: String::from_utf8_lossy(&pending.content).into_owned(),
            truncated,
            end: pending.end,
            restart: self.restart_after(pending.end),
        }
    }

    /// Takes one physical line spanning `[start, end)` of the file (newline excluded from
    /// `line`); `cut` says the reader split a line longer than the cap. Records that became
    /// complete are appended to `out`.
    pub fn push(&mut self, line: &[u8], start: u64, end: u64, cut: bool, out: &mut Vec<Record>) {
        let piece = if cut { None } else { parse_piece(line) };
        let Some(piece) = piece else {
            // Shipped as it is; a raw line interrupts nothing but itself.
            if line.is_empty() {
                return;
            }
            let record = Record {
                time_unix_nano: 0,
                stream: Stream::Unknown,
                body: String::from_utf8_lossy(line).into_owned(),
                truncated: cut,
                end,
                restart: self.restart_after(end),
            };
            out.push(record);
            return;
        };
        let max = self.max_line_bytes;
        let stream = piece.stream;
        // A line over the cap goes out in pieces of at most the cap, each marked truncated.
        if let Some(pending) = self.slot(stream).take() {
            if pending.content.len() + piece.content.len() > max {
                let record = self.emit(pending, stream, true);
                out.push(record);
            } else {
                *self.slot(stream) = Some(pending);
            }
        }
        let pending = match self.slot(stream).take() {
            Some(mut pending) => {
                pending.content.extend_from_slice(&piece.content);
                pending.end = end;
                pending
            }
            None => Pending {
                time_unix_nano: piece.time_unix_nano,
                content: piece.content,
                start,
                end,
            },
        };
        if piece.partial && pending.content.len() < max {
            *self.slot(stream) = Some(pending);
        } else {
            let record = self.emit(pending, stream, piece.partial);
            out.push(record);
        }
    }

    /// Emits whatever is waiting (the file is finished: deleted or rotated away and idle).
    pub fn flush(&mut self, out: &mut Vec<Record>) {
        let mut waiting: Vec<(Stream, Pending)> = [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .filter_map(|s| self.slot(s).take().map(|p| (s, p)))
            .collect();
        waiting.sort_by_key(|(_, p)| p.end);
        for (stream, pending) in waiting {
            let record = self.emit(pending, stream, true);
            out.push(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds whole lines (newline-terminated) and returns the records.
    fn assemble(max: usize, text: &str) -> (Vec<Record>, Assembler) {
        let mut assembler = Assembler::new(max);
        let mut out = Vec::new();
        let mut offset = 0u64;
        for line in text.split_inclusive('\n') {
            let end = offset + line.len() as u64;
            assembler.push(
                line.trim_end_matches('\n').as_bytes(),
                offset,
                end,
                false,
                &mut out,
            );
            offset = end;
        }
        (out, assembler)
    }

    #[test]
    fn cri_lines_with_partials_are_reassembled() {
        let text = "2024-05-01T10:00:00.123456789Z stdout P hello \n\
                    2024-05-01T10:00:01Z stdout P big \n\
                    2024-05-01T10:00:02Z stdout F world\n\
                    2024-05-01T12:00:00.5+02:00 stderr F oops\n\
                    2024-05-01T10:00:03Z stdout F \n";
        let (records, _) = assemble(1 << 10, text);
        let bodies: Vec<_> = records.iter().map(|r| r.body.as_str()).collect();
        assert_eq!(bodies, ["hello big world", "oops", ""]);
        assert_eq!(records[0].time_unix_nano, 1_714_557_600_123_456_789);
        assert_eq!(records[0].stream, Stream::Stdout);
        assert_eq!(records[1].stream, Stream::Stderr);
        // +02:00 converted to UTC.
        assert_eq!(records[1].time_unix_nano, 1_714_557_600_500_000_000);
        assert!(records.iter().all(|r| !r.truncated && r.restart == r.end));
        assert_eq!(records[2].end, text.len() as u64);
    }

    #[test]
    fn interleaved_streams_keep_the_restart_before_waiting_pieces() {
        let first = "2024-05-01T10:00:00Z stdout P part one \n";
        let second = "2024-05-01T10:00:00Z stderr F an error\n";
        let text = format!("{first}{second}2024-05-01T10:00:01Z stdout F and two\n");
        let (records, _) = assemble(1 << 10, &text);
        assert_eq!(records[0].body, "an error");
        // The stdout piece before it is not delivered yet: a restart must begin there.
        assert_eq!(records[0].restart, 0);
        assert_eq!(records[0].end, (first.len() + second.len()) as u64);
        assert_eq!(records[1].body, "part one and two");
        assert_eq!(records[1].restart, text.len() as u64);
    }

    #[test]
    fn docker_json_lines_and_partials() {
        let text = concat!(
            r#"{"log":"first\n","stream":"stdout","time":"2024-05-01T10:00:00.000000001Z"}"#,
            "\n",
            r#"{"log":"sp","stream":"stderr","time":"2024-05-01T10:00:01Z"}"#,
            "\n",
            r#"{"log":"lit \"q\"\n","stream":"stderr","time":"2024-05-01T10:00:02Z"}"#,
            "\n"
        );
        let (records, _) = assemble(1 << 10, text);
        let bodies: Vec<_> = records.iter().map(|r| r.body.as_str()).collect();
        assert_eq!(bodies, ["first", "split \"q\""]);
        assert_eq!(records[0].time_unix_nano, 1_714_557_600_000_000_001);
        assert_eq!(records[1].stream, Stream::Stderr);
        assert_eq!(records[1].time_unix_nano, 1_714_557_601_000_000_000);
    }

    #[test]
    fn malformed_lines_are_shipped_as_they_are() {
        let text = "not a log line at all\n\
                    2024-05-01T10:00:00Z stdout X bad tag\n\
                    yesterday stdout F bad time\n\
                    {\"log\":1}\n\
                    2024-05-01T10:00:00Z stdout F fine\n";
        let (records, _) = assemble(1 << 10, text);
        let bodies: Vec<_> = records.iter().map(|r| r.body.as_str()).collect();
        assert_eq!(
            bodies,
            [
                "not a log line at all",
                "2024-05-01T10:00:00Z stdout X bad tag",
                "yesterday stdout F bad time",
                "{\"log\":1}",
                "fine"
            ]
        );
        assert!(records[..4].iter().all(|r| r.stream == Stream::Unknown));
        assert!(records[..4].iter().all(|r| r.time_unix_nano == 0));
        assert_eq!(records[4].stream, Stream::Stdout);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_refused() {
        let mut assembler = Assembler::new(100);
        let mut out = Vec::new();
        assembler.push(
            b"2024-05-01T10:00:00Z stdout F a\xffb",
            0,
            10,
            false,
            &mut out,
        );
        assert_eq!(out[0].body, "a\u{fffd}b");
    }

    #[test]
    fn huge_partial_lines_are_cut_at_the_cap() {
        let piece = "x".repeat(40);
        let mut text = String::new();
        for _ in 0..5 {
            text.push_str(&format!("2024-05-01T10:00:00Z stdout P {piece}\n"));
        }
        text.push_str("2024-05-01T10:00:00Z stdout F end\n");
        let (records, assembler) = assemble(100, &text);
        // 200 bytes of pieces plus "end" with a cap of 100: pieces of at most 100 bytes.
        let lens: Vec<_> = records.iter().map(|r| r.body.len()).collect();
        assert_eq!(lens, [80, 80, 43]);
        assert_eq!(
            records.iter().map(|r| r.truncated).collect::<Vec<_>>(),
            [true, true, false]
        );
        let all: String = records.iter().map(|r| r.body.as_str()).collect();
        assert_eq!(all, format!("{}end", piece.repeat(5)));
        assert_eq!(assembler.pending_bytes(), 0);
        // Each piece's restart is its own end: a restart resumes with the next piece.
        assert!(records.iter().all(|r| r.restart == r.end));
    }

    #[test]
    fn a_single_piece_over_the_cap_is_emitted_at_once() {
        let line = format!("2024-05-01T10:00:00Z stdout P {}", "y".repeat(300));
        let mut assembler = Assembler::new(100);
        let mut out = Vec::new();
        assembler.push(line.as_bytes(), 0, 10, false, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].truncated);
        assert_eq!(assembler.pending_bytes(), 0);
    }

    #[test]
    fn flush_emits_waiting_pieces_in_file_order() {
        let text = "2024-05-01T10:00:00Z stderr P err \n2024-05-01T10:00:00Z stdout P out \n";
        let (records, mut assembler) = assemble(100, text);
        assert!(records.is_empty());
        let mut out = Vec::new();
        assembler.flush(&mut out);
        let bodies: Vec<_> = out.iter().map(|r| r.body.as_str()).collect();
        assert_eq!(bodies, ["err ", "out "]);
        assert_eq!(out[1].restart, text.len() as u64);
    }
}
