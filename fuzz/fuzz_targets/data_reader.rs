//! The DATA reader: feeding in any chunking gives the same result, the end is found only
//! right after CRLF.CRLF, and accepted content is CRLF-only with no NUL.
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::smtp::proto::DataReader;

fuzz_target!(|input: (u8, &[u8])| {
    let (split, data) = input;
    let mut whole = DataReader::data(64 * 1024);
    let end_whole = whole.feed(data);
    if let Some(n) = end_whole {
        assert!(data[..n].ends_with(b"\r\n") && n >= 3);
        assert!(n == 3 && &data[..3] == b".\r\n" || data[..n].ends_with(b"\r\n.\r\n"));
    }
    let mut chunked = DataReader::data(64 * 1024);
    let step = usize::from(split.max(1));
    let mut end_chunked = None;
    let mut off = 0;
    while off < data.len() {
        let to = (off + step).min(data.len());
        if let Some(n) = chunked.feed(&data[off..to]) {
            end_chunked = Some(off + n);
            break;
        }
        off = to;
    }
    assert_eq!(end_whole, end_chunked);
    let a = whole.finish();
    let b = chunked.finish();
    assert_eq!(a, b);
    if let Ok(out) = a {
        for (i, &c) in out.iter().enumerate() {
            assert_ne!(c, 0);
            if c == b'\n' {
                assert!(i > 0 && out[i - 1] == b'\r');
            }
            if c == b'\r' {
                assert_eq!(out.get(i + 1), Some(&b'\n'));
            }
        }
    }
});
