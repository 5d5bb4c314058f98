//! Request heads and bodies into Docker operations, as the engine does with what a daemon read.
#![no_main]
use buildwatch::{
    docker::api::{self, ApiRequest},
    protocol::http::{HttpEvent, RequestStream},
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut stream = RequestStream::with_body_filter(api::wants_body);
    let mut pending = None;
    for event in stream.feed(data) {
        match event {
            HttpEvent::Head(head) => {
                let request = ApiRequest::parse(&head);
                let _ = request.route();
                pending = api::classify(&request).map(|op| (op, request.api));
            }
            HttpEvent::Body { bytes, complete } => {
                if let Some((mut operation, which)) = pending.take() {
                    api::complete_with_body(&mut operation, which, &bytes, complete);
                }
            }
            _ => {}
        }
    }
});
