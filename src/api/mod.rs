//! The HTTPS submission API (L3): a second front end on the same pipeline as SMTP.
//! `keys` is the API key store (`phigate api-key`), `model` the JSON contract of `/v1`,
//! `mime` turns a request into a message, `problem` maps every error once to RFC 9457.
//! `http` is the HTTPS listener and the POST handlers, `send` one message's way into the
//! pipeline, `status` the read routes, `idempotency` the Idempotency-Key records and
//! `openapi` the generated contract.

pub mod http;
pub mod idempotency;
pub mod keys;
pub mod mime;
pub mod model;
pub mod openapi;
pub mod problem;
pub mod send;
pub mod status;

#[cfg(test)]
mod tests {
    use super::model::SendRequest;
    use super::problem::ApiError;

    fn parse(s: &str) -> Result<SendRequest, ApiError> {
        serde_json::from_str(s).map_err(|e| ApiError::from_json(&e))
    }

    #[test]
    fn json_errors_get_their_types_without_echoing_content() {
        let e =
            parse(r#"{"from":"a@b.example","to":["p@x.example"],"bogus":"SECRET"}"#).unwrap_err();
        assert!(matches!(e, ApiError::UnknownField { .. }), "{e:?}");
        let p = e.problem();
        assert_eq!(p.kind, "urn:phigate:problem:unknown-field");
        assert!(!p.detail.contains("SECRET") && !p.detail.contains("bogus"));
        let e = parse("{not json").unwrap_err();
        assert_eq!(e.problem().kind, "urn:phigate:problem:bad-json");
        assert_eq!(e.status().as_u16(), 400);
        let r = ApiError::RateLimited {
            limit: "messages_per_minute".into(),
            retry_after: 7,
        };
        assert_eq!(r.status().as_u16(), 429);
        assert_eq!(r.problem().retry_after, Some(7));
        let pol = ApiError::Policy {
            rule: "block-ssn".into(),
        }
        .problem();
        assert_eq!((pol.status, pol.rule.as_deref()), (422, Some("block-ssn")));
    }

    #[test]
    fn mime_is_built_and_checked() {
        let req = parse(
            r#"{"from":"ehr@clinic.example","to":["pat@x.example"],"bcc":["hidden@y.example"],
            "subject":"Results","text":"hello","html":"<p>hello</p>",
            "headers":{"X-App":"1"},
            "attachments":[{"filename":"a.txt","content_type":"text/plain","content_base64":"aGk="}]}"#,
        )
        .expect("parse");
        let msg = super::mime::build(&req, 10, "gw.example", "01ID").expect("build");
        let text = String::from_utf8_lossy(&msg);
        assert!(text.contains("Subject: Results") && text.contains("X-App: 1"));
        assert!(text.contains("Message-ID: <01ID@gw.example>"));
        assert!(
            !text.contains("hidden@y.example"),
            "Bcc must stay in the envelope"
        );
        let mut bad = req.clone();
        bad.attachments[0].content_base64 = "!!!".into();
        assert_eq!(
            super::mime::build(&bad, 10, "gw", "x")
                .unwrap_err()
                .problem()
                .kind,
            "urn:phigate:problem:bad-base64"
        );
        assert!(matches!(
            super::mime::build(&req, 1, "gw", "x"),
            Err(ApiError::TooManyRecipients { max: 1 })
        ));
        let mut hdr = req.clone();
        hdr.headers.insert("Content-Type".into(), "x".into());
        assert!(super::mime::build(&hdr, 10, "gw", "x").is_err());
        let mut inj = req;
        inj.subject = Some("a\r\nBcc: evil@z.example".into());
        assert!(super::mime::build(&inj, 10, "gw", "x").is_err());
    }
}
