//! The balancer's own answers: short JSON bodies (`{"msg": ...}`) and the body type they travel
//! in, shared by the management API and the proxy so neither depends on the other for them.
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

/// A body made here, whole (or empty): sent in one frame.
pub(crate) struct LocalBody(Option<Bytes>);

impl LocalBody {
    pub(crate) fn full(b: impl Into<Bytes>) -> LocalBody {
        LocalBody(Some(b.into()))
    }

    pub(crate) fn empty() -> LocalBody {
        LocalBody(None)
    }
}

impl Body for LocalBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Poll::Ready(self.get_mut().0.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// A short JSON answer made by the balancer itself: `{"msg": ...}`.
pub(crate) fn json_msg(status: StatusCode, msg: &str) -> Response<LocalBody> {
    let body = serde_json::json!({ "msg": msg }).to_string();
    json_response(status, body)
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response<LocalBody> {
    let mut resp = Response::new(LocalBody::full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
