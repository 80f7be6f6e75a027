//! Trust anchors below the root (a private signed zone anchored at its KSK).
//!
//! hickory 0.25 authenticates a DNSKEY set either because every key in it is an anchor or
//! through the DS records of the parent zone. A zone anchored at its KSK alone has a ZSK
//! that is not an anchor and no parent to fetch a DS from, so the failed DS lookup makes
//! every answer insecure. phigate closes the gap itself: it fetches the anchored zone's
//! DNSKEY set, checks that an anchored key signed it (RRSIG valid now), and hands
//! hickory every zone key of the authenticated set as anchors too, until the set's TTL
//! or its signature's expiry, whichever comes first; then it checks again.

use hickory_resolver::proto::dnssec::rdata::{DNSSECRData, DNSKEY, RRSIG};
use hickory_resolver::proto::dnssec::{TrustAnchors, Verifier};
use hickory_resolver::proto::op::{Edns, Message, MessageType, Query};
use hickory_resolver::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Re-checked at least this often, at most this rarely.
const MIN_RECHECK: Duration = Duration::from_secs(60);
const MAX_RECHECK: Duration = Duration::from_secs(86_400);

/// Why the anchored zone's key set could not be authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("DNSKEY query for {zone}: {reason}")]
    Query { zone: String, reason: String },
    #[error("no DNSKEY set of {0} is signed by the trust anchor (valid now)")]
    Unsigned(String),
}

/// The anchored zone's authenticated zone keys, and when to check them again.
pub struct Expanded {
    pub keys: Vec<DNSKEY>,
    pub recheck: Duration,
}

/// Fetch `zone`'s DNSKEY set from `servers` (with DO set, TCP when truncated) and keep
/// it only if a key in `anchors` signed it with an RRSIG valid at `now` (Unix seconds).
pub async fn expand(
    zone: &Name,
    anchors: &TrustAnchors,
    servers: &[SocketAddr],
    timeout: Duration,
    now: u32,
) -> Result<Expanded, AnchorError> {
    let mut last = String::from("no name server configured");
    for server in servers {
        match query(zone, *server, timeout).await {
            Ok(answer) => return authenticate(zone, anchors, &answer, now),
            Err(e) => last = e,
        }
    }
    Err(AnchorError::Query {
        zone: zone.to_string(),
        reason: last,
    })
}

/// The DNSKEY records of `answer` if one of its RRSIGs over them verifies with an anchor.
fn authenticate(
    zone: &Name,
    anchors: &TrustAnchors,
    answer: &Message,
    now: u32,
) -> Result<Expanded, AnchorError> {
    let records: Vec<&Record> = answer
        .answers()
        .iter()
        .filter(|r| r.name() == zone && r.record_type() == RecordType::DNSKEY)
        .collect();
    let keys: Vec<DNSKEY> = records.iter().filter_map(|r| dnskey(r)).collect();
    let sigs = answer.answers().iter().filter_map(|r| match r.data() {
        RData::DNSSEC(DNSSECRData::RRSIG(sig))
            if r.name() == zone && sig.type_covered() == RecordType::DNSKEY =>
        {
            Some(sig)
        }
        _ => None,
    });
    for sig in sigs {
        if !valid_at(sig, now) {
            continue;
        }
        let signer = keys.iter().find(|k| {
            anchors.contains(k.public_key())
                && k.algorithm() == sig.algorithm()
                && k.calculate_key_tag().ok() == Some(sig.key_tag())
                && k.verify_rrsig(zone, DNSClass::IN, sig, records.iter().copied())
                    .is_ok()
        });
        if signer.is_some() {
            let ttl = records.iter().map(|r| r.ttl()).min().unwrap_or(0);
            let until_expiry = sig.sig_expiration().get().saturating_sub(now);
            let secs = ttl.min(sig.original_ttl()).min(until_expiry);
            let recheck = Duration::from_secs(u64::from(secs)).clamp(MIN_RECHECK, MAX_RECHECK);
            let keys = keys
                .into_iter()
                .filter(|k| k.zone_key() && !k.revoke())
                .collect();
            return Ok(Expanded { keys, recheck });
        }
    }
    Err(AnchorError::Unsigned(zone.to_string()))
}

fn dnskey(r: &Record) -> Option<DNSKEY> {
    match r.data() {
        RData::DNSSEC(DNSSECRData::DNSKEY(k)) => Some(k.clone()),
        _ => None,
    }
}

fn valid_at(sig: &RRSIG, now: u32) -> bool {
    sig.sig_inception().get() <= now && now <= sig.sig_expiration().get()
}

/// One DNSKEY query: UDP, then TCP if the answer was truncated.
async fn query(zone: &Name, server: SocketAddr, timeout: Duration) -> Result<Message, String> {
    let id: u16 = rand::random();
    let mut msg = Message::new();
    msg.set_id(id)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(zone.clone(), RecordType::DNSKEY));
    let mut edns = Edns::new();
    edns.set_dnssec_ok(true).set_max_payload(4096);
    msg.set_edns(edns);
    let wire = msg.to_vec().map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(timeout, udp(&wire, server))
        .await
        .map_err(|_| "timed out".to_string())??;
    let answer = if answer.truncated() {
        tokio::time::timeout(timeout, tcp(&wire, server))
            .await
            .map_err(|_| "timed out over TCP".to_string())??
    } else {
        answer
    };
    if answer.id() != id || answer.message_type() != MessageType::Response {
        return Err("answer does not match the query".into());
    }
    Ok(answer)
}

async fn udp(wire: &[u8], server: SocketAddr) -> Result<Message, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    sock.send(wire).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65_535];
    let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
    Message::from_vec(&buf[..n]).map_err(|e| e.to_string())
}

async fn tcp(wire: &[u8], server: SocketAddr) -> Result<Message, String> {
    let mut s = tokio::net::TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let len = u16::try_from(wire.len()).map_err(|e| e.to_string())?;
    s.write_all(&len.to_be_bytes())
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(wire).await.map_err(|e| e.to_string())?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    Message::from_vec(&buf).map_err(|e| e.to_string())
}
