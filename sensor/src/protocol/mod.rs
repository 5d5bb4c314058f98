//! Wire protocols seen on container API sockets: HTTP/1.1 requests, BuildKit sessions after an
//! h2c upgrade, TLS ClientHellos of registry connections, and build steps' DNS queries.
pub mod buildkit;
pub mod buildkit_grpc;
pub mod dns;
pub mod h2;
pub mod hpack;
pub mod http;
pub mod protobuf;
pub mod tls;
