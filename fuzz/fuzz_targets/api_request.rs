//! An API request body, whatever its bytes, is either refused with a problem or built
//! into a message; parsing (single and batch) and MIME building never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use phigate::api::{mime, model::BatchRequest, model::SendRequest, problem::ApiError};
    if let Ok(b) = serde_json::from_slice::<BatchRequest>(data) {
        for m in &b.messages {
            let _ = serde_json::from_str::<SendRequest>(m.get()).map_err(|e| ApiError::from_json(&e).problem());
        }
    }
    let req: Result<SendRequest, ApiError> =
        serde_json::from_slice(data).map_err(|e| ApiError::from_json(&e));
    match req {
        Ok(r) => {
            let _ = mime::build(&r, 50, "gw.fuzz.test", "01FUZZ").map_err(|e| e.problem());
        }
        Err(e) => {
            let _ = e.problem();
        }
    }
});
