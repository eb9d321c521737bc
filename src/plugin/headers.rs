//! [`HeaderEdit`] over Pingora's request and response heads: plugins edit headers through these so
//! Pingora's header-name case map stays in step with the header map (editing the map directly
//! makes Pingora panic when it writes the head).

use pingora::http::{RequestHeader, ResponseHeader};
use portcullis_plugin_api::HeaderEdit;

macro_rules! header_edit {
    ($ty:ty) => {
        impl HeaderEdit for $ty {
            fn get(&self, name: &str) -> Option<&http::HeaderValue> {
                self.headers.get(name)
            }

            fn get_all(&self, name: &str) -> Vec<&http::HeaderValue> {
                self.headers.get_all(name).iter().collect()
            }

            fn names(&self) -> Vec<http::HeaderName> {
                self.headers.keys().cloned().collect()
            }

            fn set(&mut self, name: &str, value: &str) {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(value),
                ) {
                    let _ = self.insert_header(n, v);
                }
            }

            fn append(&mut self, name: &str, value: &str) {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(value),
                ) {
                    let _ = self.append_header(n, v);
                }
            }

            fn remove(&mut self, name: &str) {
                if let Ok(n) = http::HeaderName::from_bytes(name.as_bytes()) {
                    self.remove_header(&n);
                }
            }
        }
    };
}

pub struct RequestEdit<'a>(pub &'a mut RequestHeader);
pub struct ResponseEdit<'a>(pub &'a mut ResponseHeader);

impl std::ops::Deref for RequestEdit<'_> {
    type Target = RequestHeader;
    fn deref(&self) -> &RequestHeader {
        self.0
    }
}
impl std::ops::DerefMut for RequestEdit<'_> {
    fn deref_mut(&mut self) -> &mut RequestHeader {
        self.0
    }
}
impl std::ops::Deref for ResponseEdit<'_> {
    type Target = ResponseHeader;
    fn deref(&self) -> &ResponseHeader {
        self.0
    }
}
impl std::ops::DerefMut for ResponseEdit<'_> {
    fn deref_mut(&mut self) -> &mut ResponseHeader {
        self.0
    }
}

header_edit!(RequestEdit<'_>);
header_edit!(ResponseEdit<'_>);
