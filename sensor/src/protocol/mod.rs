//! Wire protocols seen on container API sockets: HTTP/1.1 requests, BuildKit sessions after an
//! h2c upgrade, containerd's gRPC API and the CRI on its socket, TLS ClientHellos of registry
//! connections, and build steps' DNS queries.
pub mod buildkit;
pub mod buildkit_grpc;
pub mod containerd;
pub mod cri;
pub mod dns;
pub mod h2;
pub mod hpack;
pub mod http;
pub mod protobuf;
#[cfg(test)]
pub mod testdata;
pub mod tls;
