//! Wire protocols seen on container API sockets: HTTP/1.1 requests, BuildKit sessions after an
//! h2c upgrade, and TLS ClientHellos of registry connections.
pub mod buildkit;
pub mod http;
pub mod tls;
